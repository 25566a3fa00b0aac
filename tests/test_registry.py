import pytest
import torch.nn as nn

import plugconv_lite as pl
from plugconv_lite import registry


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        pl.create("nope", 16)
    assert "se" in str(err.value) and "conv2d" in str(err.value)


def test_unknown_name_of_a_kind_lists_that_kind():
    with pytest.raises(ValueError, match="unknown attention module 'conv2d'"):
        registry.get("conv2d", "attention")


def test_bad_kind_raises():
    with pytest.raises(ValueError, match="kind='pool'"):
        registry.register("x", "pool")


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("se", "attention")(type("Other", (nn.Module,), {}))


def test_available_filters_by_kind():
    assert "se" in pl.available("attention") and "se" not in pl.available("conv")
    assert set(pl.available()) >= {"se", "conv2d"}


def test_resolve_accepts_callables_and_rejects_others():
    f = lambda c: nn.Identity()  # noqa: E731
    assert registry.resolve(f, "attention") is f
    with pytest.raises(ValueError, match="attention=3"):
        registry.resolve(3, "attention")


def test_set_progress_reaches_every_module_and_validates_p():
    class Annealed(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = None

        def set_progress(self, p):
            self.p = p

    model = nn.Sequential(Annealed(), nn.Sequential(Annealed()))
    pl.set_progress(model, 0.25)
    assert [m.p for m in registry.progress_modules(model)] == [0.25, 0.25]
    with pytest.raises(ValueError, match=r"p=1.5 must be in \[0, 1\]"):
        pl.set_progress(model, 1.5)
