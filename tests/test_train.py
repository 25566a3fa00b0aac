import math

import pytest
import torch
import torch.nn as nn

import plugconv_lite as pl
from plugconv_lite.data import synthetic_cifar100
from plugconv_lite.profiles import PROFILES, detect, profile
from plugconv_lite.train import lr_at, param_groups, train

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
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1

    resumed = _model(seed=123)  # even a differently initialised model ends identical: the weights come from ckpt
    history = train(resumed, tiny_data, TINY, seed=1, checkpoint=ckpt, progress=False)
    assert _strip_times(history) == _strip_times(expected)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_configuration_is_refused(tiny_data, tmp_path):
    ckpt = tmp_path / "run.pt"
    train(_model(), tiny_data, TINY.with_(epochs=1), seed=0, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="different run configuration"):
        train(_model(), tiny_data, TINY.with_(epochs=1, lr=0.3), seed=0, checkpoint=ckpt, progress=False)


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
    with pytest.raises(ValueError, match="profile='huge'"):
        profile("huge")


def test_sgd_is_fused_on_a_gpu_only():
    from plugconv_lite.train import fused_kw
    assert fused_kw(torch.device("cpu")) == {}
    assert fused_kw(torch.device("cuda")) == {"fused": True}  # torch >= 2.4 has a fused SGD
