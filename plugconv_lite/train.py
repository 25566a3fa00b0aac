"""The training loop: one recipe for every chapter and every profile.

Speed, and why each trick is here:
- the dataset lives on the device as uint8 and is augmented there (``data.DeviceLoader``): no CPU data pipeline;
- channels_last + bf16 autocast on a GPU: convolutions run on tensor cores without layout transposes (channels_last
  also speeds up the CPU smoke runs by about a fifth);
- the loss and accuracy are accumulated as device tensors and read once per epoch: no host sync per step;
- a fused SGD on a GPU: one kernel updates every parameter instead of several per tensor (the step of a small
  network is otherwise bound by kernel launches), and an fp16 grad scaler's inf check stays on the device (the
  unfused path reads it back with ``.item()`` every step);
- optional ``torch.compile`` (full profile) of the training step's model, with static shapes (the last partial
  batch is dropped): it fuses the element-wise work around the convolutions. Evaluation runs the eager model, so no
  second graph (eval mode, batch 1000) is compiled for a pass that takes a small fraction of the run.

Robustness: a checkpoint is written atomically after every epoch, with a sha256 of its contents; calling ``train``
again with the same checkpoint path resumes from it, and the resumed run ends with the same weights as an
uninterrupted one (data order and augmentation are functions of (seed, epoch) only). A checkpoint resumes only the
run that wrote it: the recipe, seed, model and data (source, md5 and the tensors' md5) must all match. A damaged one
is moved aside (``<name>.corrupt``) and the run starts from scratch, with one line saying so.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import Dataset, DeviceLoader, process_alive
from .profiles import Profile
from .registry import aux_loss, aux_loss_modules, set_progress

CHECKPOINT_VERSION = 2
_MAGIC = b"plugconv-lite checkpoint sha256="   # then the payload's sha256 in hex and a newline, then torch.save bytes
_STATE_KEYS = {"version", "fingerprint", "epoch", "step", "model", "optimizer", "scaler", "history"}


def lr_at(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight tensors (ndim >= 2: conv/linear kernels, DO-Conv's D); none on BN and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` of ``state`` behind a header with its sha256, written to a temporary file in the same folder,
    fsynced, then renamed over ``path``: a reader sees the old file or the new one, and any later damage is caught."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be read back as ``save_checkpoint`` wrote it."""


def load_checkpoint(path: Path, map_location=None) -> dict:
    """The state ``save_checkpoint`` wrote to ``path``; ``CorruptCheckpoint`` (with the cause) if the file is
    truncated, damaged, of another format, or lacks a checkpoint's fields. Tensors only are unpickled
    (``weights_only``)."""
    raw = memoryview(Path(path).read_bytes())
    end = bytes(raw[:200]).find(b"\n")
    if not bytes(raw[:len(_MAGIC)]) == _MAGIC or end < 0:
        raise CorruptCheckpoint("no checksum header: damaged, or written by an older version")
    payload = raw[end + 1:]
    if hashlib.sha256(payload).hexdigest() != bytes(raw[len(_MAGIC):end]).decode("ascii", "replace"):
        raise CorruptCheckpoint("its contents fail their sha256 check")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # what torch raises on an unreadable payload varies (RuntimeError, EOFError, ...)
        raise CorruptCheckpoint(f"torch.load fails: {type(err).__name__}") from err
    if not isinstance(state, dict) or not _STATE_KEYS <= state.keys():
        raise CorruptCheckpoint("it lacks a checkpoint's fields")
    return state


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of saves killed before their rename (``.<name>.<pid>.tmp`` of a process that is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-4]
        if not (pid.isdigit() and process_alive(int(pid))):
            tmp.unlink(missing_ok=True)


def _resume_state(checkpoint: Path, device: torch.device, fingerprint: dict) -> Optional[dict]:
    """The state to resume from: None if there is no checkpoint, or if it is corrupt (then it is moved aside and a
    line says so); ``ValueError`` if it belongs to another run (recipe, seed, model or data differ)."""
    checkpoint = Path(checkpoint)
    _remove_stale_temporaries(checkpoint)
    if not checkpoint.exists():
        return None
    try:
        state = load_checkpoint(checkpoint, map_location=device)
    except CorruptCheckpoint as err:
        aside = checkpoint.with_name(checkpoint.name + ".corrupt")
        os.replace(checkpoint, aside)
        print(f"checkpoint {checkpoint} is corrupt ({err}); moved to {aside.name}, training this run from scratch",
              file=sys.stderr, flush=True)
        return None
    theirs = state["fingerprint"]
    if state["version"] != CHECKPOINT_VERSION or theirs != fingerprint:
        differ = sorted(k for k in fingerprint.keys() | theirs.keys() if theirs.get(k) != fingerprint.get(k))
        if "data" in differ:
            differ[differ.index("data")] = (f"data ({theirs.get('data', {}).get('source')} there, "
                                            f"{fingerprint['data']['source']} here)")
        raise ValueError(f"checkpoint {checkpoint} was written by another run ({', '.join(differ)} differ); it cannot "
                         "be resumed here. Delete it to start afresh, or use another checkpoint path")
    return state


def resolve_device(device=None) -> torch.device:
    """``device`` as a torch.device; None means the GPU if there is one, else the CPU. ``ValueError`` for a device
    torch does not know or this machine does not have (``"cuda"`` without a GPU), before any work starts."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device torch knows; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available on this machine (torch {torch.__version__}); "
                             "use 'cpu' or leave the device unset")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available on this machine")
    return dev


def amp_dtype(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def fused_kw(device: torch.device) -> dict:
    """``{"fused": True}`` for SGD on a GPU (where this torch has a fused SGD), else ``{}``."""
    if device.type == "cuda" and "fused" in inspect.signature(torch.optim.SGD).parameters:
        return {"fused": True}
    return {}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, dtype: Optional[torch.dtype] = None) -> dict:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy on ``loader``; with a model's ``head_logits`` hook (see
    ``registry``) also ``test_top1_<name>`` per named head."""
    model.eval()
    device = loader.x.device
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    n = 0
    heads = getattr(model, "head_logits", None)   # a model with named heads (registry's docstring)
    extra: dict[str, torch.Tensor] = {}
    for xb, yb in loader.epoch():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out, named = heads(xb) if callable(heads) else (model(xb), {})
        for name, logits in named.items():
            extra[name] = extra.get(name, 0) + (logits.argmax(1) == yb).sum()
        out = out.float()
        loss_sum += F.cross_entropy(out, yb, reduction="sum")
        top5 = out.topk(min(5, out.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == yb).sum()
        correct5 += (top5 == yb[:, None]).any(dim=1).sum()
        n += len(yb)
    return {"test_top1": 100 * correct1.item() / n, "test_top5": 100 * correct5.item() / n,
            "test_loss": loss_sum.item() / n, **{f"test_top1_{k}": 100 * c.item() / n for k, c in extra.items()}}


def _fingerprint(profile: Profile, seed: int, model: nn.Module, data: Dataset) -> dict:
    """What a checkpoint must match to be resumed: the recipe, the seed, the model's structure (every state entry's
    name, shape and dtype) and the data it trains on (``Dataset.fingerprint``)."""
    layout = hashlib.md5()
    for name, t in model.state_dict().items():
        layout.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return {"recipe": profile.recipe(), "seed": seed, "model": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()), "state_layout": layout.hexdigest(),
            "data": data.fingerprint()}


def train(model: nn.Module, data: Dataset, profile: Profile, *, seed: int = 0, device=None,
          checkpoint: Optional[Path] = None, progress: bool = True,
          on_step: Optional[Callable[[int], None]] = None) -> list[dict]:
    """Train ``model`` on ``data`` with ``profile``'s recipe; returns the per-epoch history.

    ``data`` should already be the subset the profile asks for (``experiments`` takes care of that). With
    ``checkpoint`` the state is saved atomically after every epoch and an existing checkpoint is resumed.
    ``on_step(step)`` is called after every optimizer step (tests use it to interrupt a run).

    Modules that follow the schedule get ``set_progress(step / total_steps)`` before every step; modules that add a
    loss term (``aux_loss()``, see ``registry.aux_loss``) have it added to the cross-entropy every step, and the
    history then has an ``aux_loss`` column (the term's mean over the epoch's steps; ``train_loss`` stays the
    cross-entropy alone). A model without such modules trains exactly as it would without this machinery. A model
    that defines ``training_loss`` / ``head_logits`` (``registry``'s docstring) is trained on its own objective and
    evaluated with its named heads' accuracies in the history.
    """
    device = resolve_device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fingerprint = _fingerprint(profile, seed, model, data)
    channels_last = profile.channels_last  # NHWC: tensor cores on a GPU; oneDNN's faster kernels on a CPU too
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    dtype = amp_dtype(device, profile.amp)
    data = data.to(device)
    train_loader = DeviceLoader(data.train_x, data.train_y, profile.batch_size, train=True, seed=seed,
                                channels_last=channels_last)
    test_loader = DeviceLoader(data.test_x, data.test_y, 1000, train=False, channels_last=channels_last)
    if len(train_loader) == 0:
        raise ValueError(f"batch_size={profile.batch_size} must be <= the {len(data.train_y)} training images")
    steps_per_epoch = len(train_loader)
    total_steps = profile.epochs * steps_per_epoch
    warmup_steps = round(profile.warmup_epochs * steps_per_epoch)

    optimizer = torch.optim.SGD(param_groups(model, profile.weight_decay), lr=profile.lr,
                                momentum=profile.momentum, nesterov=profile.nesterov, **fused_kw(device))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=profile.label_smoothing)
    step_model = torch.compile(model, dynamic=False) if (profile.compile and cuda) else model
    aux_modules = aux_loss_modules(model)  # found once: the model's structure does not change while it trains
    model_loss = getattr(model, "training_loss", None)   # a model's own objective (registry's docstring)
    model_loss = model_loss if callable(model_loss) else None

    history: list[dict] = []
    start_epoch, step = 0, 0
    state = _resume_state(checkpoint, device, fingerprint) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch, step = state["history"], state["epoch"], state["step"]
        if progress:
            print(f"resumed from {checkpoint} after epoch {start_epoch}/{profile.epochs}")

    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, unit="step", leave=False)
    for epoch in range(start_epoch, profile.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        aux_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = steps = 0
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for xb, yb in train_loader.epoch(epoch):
            set_progress(model, step / total_steps)
            lr = lr_at(step, total_steps, profile.lr, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                if model_loss is None:
                    out = step_model(xb)
                    loss = objective = criterion(out, yb)
                else:
                    loss, out = model_loss(xb, yb, criterion)
                    objective = loss
                aux = aux_loss(model, aux_modules) if aux_modules else None
                if aux is not None:
                    objective = loss + aux
                    aux_sum += aux.detach().float()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach() * len(yb)
            correct += (out.detach().argmax(1) == yb).sum()
            seen += len(yb)
            steps += 1
            step += 1
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(step)
        if cuda:
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        set_progress(model, step / total_steps)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum.item() / seen,
               "train_acc": 100 * correct.item() / seen, "train_images": seen, "train_time_s": train_time,
               "images_per_s": seen / train_time}
        if aux_modules:
            row["aux_loss"] = aux_sum.item() / steps
        row.update(evaluate(model, test_loader, dtype))
        history.append(row)
        if progress:
            print(f"epoch {epoch + 1:>3}/{profile.epochs}  loss {row['train_loss']:.3f}  "
                  f"train {row['train_acc']:5.1f}%  test top-1 {row['test_top1']:5.2f}%  "
                  f"({row['images_per_s']:,.0f} img/s)", flush=True)
        if checkpoint is not None:
            save_checkpoint({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "epoch": epoch + 1,
                         "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "history": history}, checkpoint)
    if bar is not None:
        bar.close()
    return history
