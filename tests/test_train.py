import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

import plugconv_lite as pl
from plugconv_lite.data import synthetic_cifar100
from plugconv_lite.profiles import PROFILES, detect, profile
from plugconv_lite.train import load_checkpoint, lr_at, param_groups, resolve_device, train

TINY = PROFILES["smoke"].with_(name="tiny", width=8, epochs=3, batch_size=50, lr=0.05, warmup_epochs=0.5,
                               train_images=None, test_images=None)


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_cifar100(train=400, test=100, num_classes=10, quiet=True)


def _model(seed=0):
    torch.manual_seed(seed)
    return pl.resnet20(num_classes=10, width=8)


def _strip_times(history):
    return [{k: v for k, v in row.items() if k not in ("train_time_s", "images_per_s")} for row in history]


def test_interrupted_run_resumes_to_identical_weights_and_metrics(tiny_data, tmp_path):
    reference = _model()
    expected = train(reference, tiny_data, TINY, seed=1, progress=False)

    ckpt = tmp_path / "run.pt"

    def interrupt(step):
        if step == 13:  # in the middle of the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_model(), tiny_data, TINY, seed=1, checkpoint=ckpt, progress=False, on_step=interrupt)
    assert load_checkpoint(ckpt)["epoch"] == 1

    resumed = _model(seed=123)  # even a differently initialised model ends identical: the weights come from ckpt
    history = train(resumed, tiny_data, TINY, seed=1, checkpoint=ckpt, progress=False)
    assert _strip_times(history) == _strip_times(expected)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_configuration_is_refused(tiny_data, tmp_path):
    ckpt = tmp_path / "run.pt"
    train(_model(), tiny_data, TINY.with_(epochs=1), seed=0, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"checkpoint .*run.pt was written by another run \(recipe differ\)"):
        train(_model(), tiny_data, TINY.with_(epochs=1, lr=0.3), seed=0, checkpoint=ckpt, progress=False)


# --- checkpoints: identity and damage (a micro run: 2 steps) ---------------------------------------------------------

MICRO = TINY.with_(epochs=1)


@pytest.fixture(scope="module")
def micro_data():
    return synthetic_cifar100(train=100, test=100, num_classes=10, quiet=True)  # TINY's batch shapes: shared warm-up


def test_checkpoint_never_resumes_on_other_data(micro_data, tmp_path):
    """A run started on the synthetic fallback does not resume on CIFAR-100 (nor the reverse, nor on other data of
    the same source): the checkpoint's identity holds the data source, its md5 and the tensors' md5."""
    ckpt = tmp_path / "run.pt"
    train(_model(), micro_data, MICRO, checkpoint=ckpt, progress=False)
    cifar_like = replace(micro_data, source="cifar100", md5={"train": "0" * 32})
    with pytest.raises(ValueError, match=r"data \(synthetic there, cifar100 here\) differ"):
        train(_model(), cifar_like, MICRO, checkpoint=ckpt, progress=False)
    other = synthetic_cifar100(train=100, test=100, num_classes=10, seed=1, quiet=True)
    with pytest.raises(ValueError, match="data .* differ"):
        train(_model(), other, MICRO, checkpoint=ckpt, progress=False)
    ckpt2 = tmp_path / "run2.pt"
    train(_model(), cifar_like, MICRO, checkpoint=ckpt2, progress=False)
    with pytest.raises(ValueError, match=r"data \(cifar100 there, synthetic here\) differ"):
        train(_model(), micro_data, MICRO, checkpoint=ckpt2, progress=False)


@pytest.fixture(scope="module")
def micro_run(micro_data, tmp_path_factory):
    """(history, checkpoint bytes) of one uninterrupted micro run."""
    ckpt = tmp_path_factory.mktemp("micro") / "run.pt"
    history = train(_model(), micro_data, MICRO, checkpoint=ckpt, progress=False)
    return history, ckpt.read_bytes()


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "torch_file"])
def test_corrupt_checkpoint_is_named_moved_aside_and_the_run_restarts(micro_data, micro_run, tmp_path, capsys,
                                                                      damage):
    expected, blob = micro_run
    ckpt, neighbour = tmp_path / "run.pt", tmp_path / "other.pt"
    neighbour.write_bytes(b"another run's checkpoint")
    if damage == "flip":  # a byte in the middle of a tensor: torch.load alone would not notice
        blob = bytearray(blob)
        blob[len(blob) // 2] ^= 0xFF
        ckpt.write_bytes(bytes(blob))
    elif damage == "truncate":
        ckpt.write_bytes(blob[:1000])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:  # a plain torch file, as older versions wrote: no checksum
        torch.save({"epoch": 1}, ckpt)
    history = train(_model(), micro_data, MICRO, checkpoint=ckpt, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"checkpoint {ckpt} is corrupt" in err[0] and "training this run from scratch" in err[0]
    assert _strip_times(history) == _strip_times(expected)
    assert (tmp_path / "run.pt.corrupt").exists() and load_checkpoint(ckpt)["epoch"] == 1
    assert neighbour.read_bytes() == b"another run's checkpoint"


def test_temporary_file_of_a_killed_save_is_removed(micro_data, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ckpt = tmp_path / "run.pt"
    stale, live = tmp_path / f".run.pt.{dead.pid}.tmp", tmp_path / f".run.pt.{os.getpid()}.tmp"
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    train(_model(), micro_data, MICRO, checkpoint=ckpt, progress=False)
    assert not stale.exists() and ckpt.exists()


def test_set_progress_is_called_every_iteration_with_growing_p(tiny_data):
    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def set_progress(self, p):
            self.seen.append(p)

        def forward(self, x):
            return x

    model = _model()
    model.layer1[0].attn = Recorder()
    train(model, tiny_data, TINY.with_(epochs=2), progress=False)
    seen = model.layer1[0].attn.seen
    steps = 2 * (400 // 50)
    assert len(seen) == steps + 2  # every step, plus once before each epoch's evaluation
    assert seen[0] == 0.0 and seen[-1] == 1.0 and all(a <= b for a, b in zip(seen, seen[1:]))


def test_training_learns_the_synthetic_classes(tiny_data):
    history = train(_model(), tiny_data, TINY.with_(epochs=4), seed=0, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_top1"] > 30  # 10 classes: chance is 10%


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 0.4, 10) for s in range(100)]
    assert lrs[9] == pytest.approx(0.4) and lrs[0] == pytest.approx(0.04)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, 100, 0.4, 10) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_only_on_weight_tensors():
    groups = param_groups(pl.resnet20(attn="se"), 5e-4)
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 5e-4
    assert all(p.ndim < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_profiles_choice(monkeypatch):
    monkeypatch.setenv("PLUGCONV_PROFILE", "colab")
    assert profile().name == "colab"
    assert profile("full").epochs == 30 and profile("full").seeds == (0, 1, 2)
    monkeypatch.delenv("PLUGCONV_PROFILE")
    assert profile().name == detect()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect() == "smoke"
    with pytest.raises(ValueError, match="profile='huge' must be one of"):
        profile("huge")
    monkeypatch.setenv("PLUGCONV_PROFILE", "huge")
    with pytest.raises(ValueError, match=r"profile='huge' \(from \$PLUGCONV_PROFILE\) must be one of"):
        profile()


def test_resolve_device_refuses_devices_this_machine_lacks(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='gpu' is not a device torch knows"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='cuda:0': CUDA is not available"):
        resolve_device("cuda:0")
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3': this machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:3")


def test_sgd_is_fused_on_a_gpu_only():
    from plugconv_lite.train import fused_kw
    assert fused_kw(torch.device("cpu")) == {}
    assert fused_kw(torch.device("cuda")) == {"fused": True}  # torch >= 2.4 has a fused SGD


class _Penalised(nn.Module):
    """Identity with a loss term: lam * ||w||^2 of a parameter the cross-entropy never sees."""

    def __init__(self, lam):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))
        self.lam, self._term, self.forwards = lam, None, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self._term = self.lam * self.w.pow(2).sum()
            self.forwards += 1
        return x

    def aux_loss(self):
        term, self._term = self._term, None
        return term


def test_aux_loss_of_a_module_is_added_to_the_objective_and_logged(tiny_data):
    """The trainer collects every module's aux_loss() each step: the parameter only that term reaches is driven
    towards 0, the history logs the term's mean, and train_loss stays the cross-entropy alone."""
    model = _model()
    model.layer1[0].attn = _Penalised(lam=1.0)
    history = train(model, tiny_data, TINY.with_(epochs=2), progress=False)
    w = model.layer1[0].attn.w.detach()
    assert float(w.abs().max()) < 0.9  # started at 1; weight decay alone would leave ~0.999 after 16 steps
    assert "aux_loss" in history[0] and history[1]["aux_loss"] < history[0]["aux_loss"]
    assert model.layer1[0].attn.aux_loss() is None  # every term was read by the trainer


def test_a_model_without_loss_terms_trains_exactly_as_before(tiny_data):
    """A module that defines aux_loss() but returns None adds nothing: the run is bitwise that of the bare model."""
    class Silent(nn.Module):
        def forward(self, x):
            return x

        def aux_loss(self):
            return None

    plain, silent = _model(), _model()
    silent.layer1[0].attn = Silent()
    a = train(plain, tiny_data, TINY.with_(epochs=1), seed=0, progress=False)
    b = train(silent, tiny_data, TINY.with_(epochs=1), seed=0, progress=False)
    assert _strip_times(a) == [{k: v for k, v in r.items() if k != "aux_loss"} for r in _strip_times(b)]
    for p, q in zip(plain.parameters(), silent.parameters()):
        assert torch.equal(p, q)
    assert "aux_loss" not in a[0]


class _OwnObjective(nn.Module):
    """A model with the trainer's ``training_loss`` hook: the plain network's cross-entropy, counted per call."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.net, self.scale, self.calls = _model(), scale, 0

    def forward(self, x):
        return self.net(x)

    def training_loss(self, x, target, criterion):
        self.calls += 1
        out = self.net(x)
        return self.scale * criterion(out, target), out


def test_a_model_objective_hook_that_is_the_plain_loss_trains_exactly_as_the_plain_model(tiny_data):
    """training_loss replaces criterion(model(x), y) and nothing else: with the same loss the run is bitwise the
    plain model's; the hook is called once per step."""
    plain, hooked = _model(), _OwnObjective()
    a = train(plain, tiny_data, TINY.with_(epochs=1), seed=0, progress=False)
    b = train(hooked, tiny_data, TINY.with_(epochs=1), seed=0, progress=False)
    assert _strip_times(a) == _strip_times(b)
    assert hooked.calls == len(tiny_data.train_y) // TINY.batch_size
    for p, q in zip(plain.parameters(), hooked.net.parameters()):
        assert torch.equal(p, q)


def test_the_model_objective_is_what_the_trainer_minimises_and_logs(tiny_data):
    """A hook returning 3 x the cross-entropy: train_loss logs the hook's loss (3 x the plain first step's loss
    at the same initial weights), and the weights move differently from the plain run."""
    plain, hooked = _model(), _OwnObjective(scale=3.0)
    a = train(plain, tiny_data, TINY.with_(epochs=1), seed=0, progress=False)
    b = train(hooked, tiny_data, TINY.with_(epochs=1), seed=0, progress=False)
    assert b[0]["train_loss"] > 2 * a[0]["train_loss"]
    assert any(not torch.equal(p, q) for p, q in zip(plain.parameters(), hooked.net.parameters()))


def test_genet_history_records_the_ensemble_and_every_members_accuracy(tiny_data):
    """evaluate() takes a model's head_logits: test_top1 is the ensemble's, test_top1_member<g> each member's, equal
    to the accuracies computed here from the trained network."""
    from plugconv_lite.data import DeviceLoader
    from plugconv_lite.train import evaluate

    torch.manual_seed(0)
    net = pl.resnet18(num_classes=10, width=8, ensemble=2)
    history = train(net, tiny_data, TINY.with_(epochs=1), seed=0, progress=False)
    row = history[-1]
    assert {"test_top1_member1", "test_top1_member2"} <= set(row)
    net.eval()
    loader = DeviceLoader(tiny_data.test_x, tiny_data.test_y, 1000, train=False)
    xb, yb = next(iter(loader.epoch()))
    with torch.no_grad():
        z = net.member_logits(xb)
    for g in range(2):
        assert row[f"test_top1_member{g + 1}"] == pytest.approx(100 * (z[:, g].argmax(1) == yb).float().mean().item())
    assert row["test_top1"] == pytest.approx(100 * (z.mean(1).argmax(1) == yb).float().mean().item())
    assert evaluate(net, loader)["test_top1"] == pytest.approx(row["test_top1"])
    assert "test_top1_member1" not in train(_model(), tiny_data, TINY.with_(epochs=1), progress=False)[0]
