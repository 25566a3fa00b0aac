"""The part page "Attention at a glance" (book/part_attention.ipynb): every attention module measured on one layer,
and a short probe training that shows what each one does to real feature maps.

The probe is deliberately small, so that the page stays within its time budget: a two-layer stem (3 -> 32 -> 64
channels, 32x32 -> 16x16) is trained with a linear classifier on a few thousand CIFAR-100 images, then frozen; each
attention module is trained for a few hundred steps between the frozen stem's features and a fresh classifier.
That shows each module's mechanics on real features; it is not what the modules of a converged ResNet-18 attend to.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..measure import compare, count_flops, count_params, peak_memory_mb, saved_activation_mb
from ..registry import create

# the part's modules (chapters 01 and 17-24; DANet registers its two halves too). The token mixers of the part
# "Token mixers in convolutional networks" keep the attention contract as well; their own part page measures them.
PART = ("a2n", "cam", "cat", "cbam", "danet", "eca", "gc", "pam", "se", "sem", "ulsam")


def check_registered(names: Sequence[str] = PART) -> tuple[str, ...]:
    """``names`` if every one is a registered attention module; otherwise a ``LookupError`` naming the missing."""
    from .part_dynamic import check_registered as check
    return check(names, kind="attention")


def layer_costs(names: Sequence[str], channels: int = 64, size: int = 16, batch: int = 8, device=None,
                repeats: int = 10, rounds: int = 5):
    """One row per module ``create(name, channels)`` on a (batch, channels, size, size) map: parameters, FLOPs,
    latency (median ms of interleaved rounds, an identity layer timed alongside), CUDA peak memory (NaN on a CPU)
    and the memory a training step keeps for backward (any device)."""
    import pandas as pd

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    modules = {"identity": nn.Identity()}
    modules.update({n: create(n, channels).to(device).eval() for n in names})
    shape = (batch, channels, size, size)
    timed = compare(modules, baseline="identity", input_size=shape, device=device, warmup=2, repeats=repeats,
                    rounds=rounds)
    rows = []
    for n in names:
        m = modules[n]
        rows.append({"module": n, "params": count_params(m), "MFLOPs": count_flops(m, shape, device) / 1e6,
                     "latency_ms": timed.loc[n, "latency_ms"],
                     "peak_MB": peak_memory_mb(m, shape, device) if device.type == "cuda" else float("nan"),
                     "saved_MB": saved_activation_mb(m, shape, device)})
    return pd.DataFrame(rows).set_index("module")


class _Stem(nn.Sequential):
    def __init__(self, width: int = 64):
        super().__init__(nn.Conv2d(3, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(),
                         nn.Conv2d(width // 2, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU())


class _Head(nn.Module):
    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def _steps(params, model_fn, x, y, steps: int, batch: int, lr: float, g: torch.Generator) -> float:
    opt = torch.optim.Adam(params, lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=g)
        loss = F.cross_entropy(model_fn(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def probe(names: Sequence[str], images: torch.Tensor, labels: torch.Tensor, num_classes: int = 100,
          width: int = 64, stem_steps: int = 150, steps: int = 100, batch: int = 64, lr: float = 3e-3,
          seed: int = 0) -> tuple[nn.Module, dict, dict]:
    """Train the frozen stem (``stem_steps`` Adam steps, with a linear head), then every module in ``names`` on its
    features (``steps`` steps, module + fresh head). ``images`` are normalised (N, 3, 32, 32). Returns the stem, the
    trained modules (eval mode) and, per module plus "stem", the last training batch's loss and the seconds spent."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    stem, head = _Stem(width), _Head(width, num_classes)
    t0 = time.perf_counter()
    stem_loss = _steps([*stem.parameters(), *head.parameters()], lambda x: head(stem(x)), images, labels,
                       stem_steps, batch, lr, g)
    info = {"stem": {"loss": stem_loss, "seconds": time.perf_counter() - t0}}
    stem.eval().requires_grad_(False)
    with torch.no_grad():
        feats = stem(images)
    modules = {}
    for name in names:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        module, head = create(name, width), _Head(width, num_classes)
        loss = _steps([*module.parameters(), *head.parameters()], lambda f: head(module(f)), feats, labels, steps,
                      batch, lr, g)
        modules[name] = module.eval()
        info[name] = {"loss": loss, "seconds": time.perf_counter() - t0}
    return stem, modules, info


def gains(module: nn.Module, x: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """How much ``module`` scales each position and each channel of ``x`` (B, C, H, W): the spatial gain
    |y[:, :, i, j]| / |x[:, :, i, j]| (norms over channels), (B, H, W), and the channel gain
    |y[:, c]| / |x[:, c]| (norms over positions), (B, C). Defined for any shape-preserving module."""
    with torch.no_grad():
        y = module(x)
    spatial = y.norm(dim=1) / x.norm(dim=1).clamp_min(eps)
    channel = y.flatten(2).norm(dim=2) / x.flatten(2).norm(dim=2).clamp_min(eps)
    return spatial, channel
