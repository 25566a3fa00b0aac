"""FCViT's query-irrelevant global context and token mixer (plugconv_lite/attention/fcvit.py)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import randomise_parameters
from plugconv_lite.attention.fcvit import FCViTMixer, GlobalContext




def reference_gc(m, x):
    """The official order: per head the dot product of each token with the mean token, standardised jointly over
    heads and positions (unbiased std), rescaled per head, times the maxout context."""
    B, C, H, W = x.shape
    h, d = m.heads, C // m.heads
    X = x.reshape(B, C, H * W)
    g = X.mean(-1, keepdim=True)                                          # (B, C, 1)
    sim = (X.reshape(B, h, d, -1) * g.reshape(B, h, d, 1)).sum(2) * d ** -0.5
    mean = sim.mean(dim=(1, 2), keepdim=True)
    std = sim.var(dim=(1, 2), keepdim=True, unbiased=True).sqrt()
    sim = (sim - mean) / (std + 1e-5) * m.rescale_weight[:, None] + m.rescale_bias[:, None]
    z = g[..., 0] @ m.fc1.weight.T + m.fc1.bias
    z = torch.maximum(z[:, :z.shape[1] // 2], z[:, z.shape[1] // 2:]) if m.compete else F.gelu(z)
    v = z @ m.fc2.weight.T + m.fc2.bias
    return (sim.reshape(B, h, 1, H * W) * v.reshape(B, h, d, 1)).reshape(B, C, H, W)


@pytest.mark.parametrize("compete", [True, False])
def test_global_context_equals_the_written_out_equations(compete):
    m = randomise_parameters(GlobalContext(32, heads=4, reduction=4, compete=compete, dtype=torch.float64))
    x = torch.randn(3, 32, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_gc(m, x), rtol=0, atol=1e-12)


def test_context_is_query_irrelevant_one_vector_per_image_times_a_scalar_per_position_and_head():
    """The defining property: within a head every position's output is the SAME vector v (the global context)
    scaled by one number, so the per-head output map has rank 1 over (channels, positions)."""
    m = randomise_parameters(GlobalContext(32, heads=4, reduction=4, dtype=torch.float64))
    y = m(torch.randn(2, 32, 6, 6, dtype=torch.float64)).reshape(2, 4, 8, 36)
    for b in range(2):
        for k in range(4):
            s = torch.linalg.svdvals(y[b, k])
            assert s[1] < 1e-10 * s[0]


def test_similarity_is_standardised_over_heads_and_positions_jointly():
    m = GlobalContext(16, heads=4, reduction=2, dtype=torch.float64)
    s = m.similarity(torch.randn(2, 16, 5, 5, dtype=torch.float64)).reshape(2, -1)
    torch.testing.assert_close(s.mean(1), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(s.std(1), torch.ones(2, dtype=torch.float64), atol=1e-3, rtol=0)  # std / (std + eps)
    per_head = m.similarity(torch.randn(1, 16, 5, 5, dtype=torch.float64)).reshape(4, -1).mean(1)
    assert per_head.abs().max() > 1e-3          # not standardised per head


def test_mixer_reaches_the_whole_map_through_the_global_context():
    """With kernels of 1 (no local mixing at all) the output at one position still depends on every input
    position, through the mean token: global reach at linear cost."""
    m = randomise_parameters(FCViTMixer(16, heads=4, kernel_sizes=(1, 1), dtype=torch.float64))
    x = torch.randn(1, 16, 9, 9, dtype=torch.float64, requires_grad=True)
    m(x)[0, :, 0, 0].sum().backward()
    assert (x.grad[0].abs().sum(0) > 0).all()


def test_mixer_equals_its_two_rounds_and_starts_near_the_identity():
    m = randomise_parameters(FCViTMixer(16, heads=4, kernel_sizes=(3, 5), dtype=torch.float64))
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    t = F.group_norm(x, 1, m.norm.weight, m.norm.bias, m.norm.eps)
    for gc, dw, fc in zip(m.gc, m.dw, m.fc):
        t = t + reference_gc(gc, t)
        t = F.gelu(fc(dw(t)))
    torch.testing.assert_close(m(x), x + m.layer_scale[:, None, None] * t, rtol=0, atol=1e-12)
    fresh = FCViTMixer(16, heads=4, dtype=torch.float64)
    assert (fresh(x) - x).abs().max() < 1e-3 * x.abs().max()   # layer scale 1e-5


def test_cost_is_linear_in_the_number_of_positions():
    f = [pl.count_flops(FCViTMixer(16, heads=4), (1, 16, s, s)) for s in (8, 16, 32)]
    assert f[2] - f[1] == 4 * (f[1] - f[0])


@pytest.mark.parametrize("kw, match", [(dict(heads=3), "heads=3 must divide channels=32"),
                                       (dict(gc_reduction=64), "reduction=64 leaves no hidden unit"),
                                       (dict(kernel_sizes=(11,)), "kernel_sizes=\\(11,\\) must be two"),
                                       (dict(kernel_sizes=(4, 3)), "must be odd"),
                                       (dict(fc_min=0), "fc_min")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        FCViTMixer(32, **kw)


def test_from_site_clips_only_the_taps_that_never_reach_the_map_and_computes_the_same():
    """On an H x H map a tap at offset |o| > H - 1 only ever multiplies zero padding: the clipped kernel
    (2H - 1) with the centre of the full kernel's weights gives exactly the full mixer's output."""
    from plugconv_lite.models.plugs import PlugSite
    site = PlugSite("layer4.0.conv2", "conv2", 16, 16, 3, stage=3, block=0, resolution=4)
    clipped = FCViTMixer.from_site(site, heads=4)
    assert clipped.kernel_sizes == (7, 7)
    assert FCViTMixer.from_site(site.child(resolution=8), heads=4).kernel_sizes == (11, 11)
    assert FCViTMixer.from_site(site, heads=4, clip_to_map=False).kernel_sizes == (11, 11)
    full = randomise_parameters(FCViTMixer(16, heads=4, dtype=torch.float64))
    clipped = clipped.double()
    state = {k: (v[..., 2:-2, 2:-2] if k.startswith("dw.") and k.endswith("weight") else v)
             for k, v in full.state_dict().items()}
    clipped.load_state_dict(state)
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(clipped(x), full(x), rtol=0, atol=1e-12)
    full_site = FCViTMixer.from_site(site.child(resolution=None), heads=4)   # unknown map: nothing clipped
    assert full_site.kernel_sizes == (11, 11)


def test_resnet_mixer_sites_get_the_released_kernels_clipped_per_stage():
    model = pl.resnet18(width=8, mixer="fcvit", mixer_where="stages2-4", mixer_kw={"heads": 4})
    ks = {n: m.kernel_sizes for n, m in model.named_modules() if isinstance(m, FCViTMixer)}
    assert ks == {f"layer{i}.{j}.conv2": (7, 7) if i == 4 else (11, 11) for i in (2, 3, 4) for j in (0, 1)}
    with pytest.raises(ValueError, match="clip_to_map='yes' must be True or False"):
        pl.resnet18(width=8, mixer="fcvit", mixer_where="stages2-4", mixer_kw={"clip_to_map": "yes"})
