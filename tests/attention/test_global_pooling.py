"""Attentions that see the map only through a global pooling commute with any permutation of the pixels."""
import pytest
import torch

import plugconv_lite as pl

GLOBAL = {"se": {}, "eca": {}, "gc": {"fusion": "both"}, "gc-avg": {"pooling": "avg", "fusion": "both"}}
LOCAL = {"cbam": {}, "ulsam": {}}


def _module(name, kw, g):
    m = pl.create(name.split("-")[0], 16, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():  # random everywhere, so a zero-initialised layer cannot hide a position dependence
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return m


def _shuffle(t, perm):
    return t.flatten(2)[:, :, perm].reshape(t.shape)


@pytest.mark.parametrize("name", GLOBAL)
def test_commutes_with_a_permutation_of_the_pixels(rng, name):
    m = _module(name, GLOBAL[name], rng)
    x = torch.randn(2, 16, 5, 7, generator=rng)
    for _ in range(3):
        perm = torch.randperm(35, generator=rng)
        torch.testing.assert_close(m(_shuffle(x, perm)), _shuffle(m(x), perm))


@pytest.mark.parametrize("name", LOCAL)
def test_spatial_attentions_do_not(rng, name):
    """The check above can fail: CBAM's 7x7 conv and ULSAM's 3x3 max-pool see neighbourhoods."""
    m = _module(name, LOCAL[name], rng)
    x = torch.randn(2, 16, 5, 7, generator=rng)
    perm = torch.randperm(35, generator=rng)
    assert (m(_shuffle(x, perm)) - _shuffle(m(x), perm)).abs().max() > 1e-4
