import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from plugconv_lite.attention import ULSAM
from plugconv_lite.measure import count_params
from contract import bn_eval, randomise_norms


def _official_equations(m: ULSAM, x: torch.Tensor) -> torch.Tensor:
    """MODULES.md's ULSAM (Nandan91/ULSAM ulsam.py), eval mode: a loop over the subspaces, each with its own
    depthwise 1x1 conv, BN, ReLU, 3x3 max-pool, pointwise conv to one map, BN, ReLU, softmax over H x W, then
    x * A + x. The official convs' biases sit in front of the BNs; ours are folded into the running means."""
    g, C = m.groups, m.channels
    n = C // g
    outs = []
    for i, x_i in enumerate(x.chunk(g, dim=1)):
        sl = slice(i * n, (i + 1) * n)
        t = x_i * m.dw.weight[sl].reshape(1, n, 1, 1)
        if m.norm_act:
            t = torch.relu(bn_eval(t, _slice_bn(m.dw_norm[0], sl)))
        else:
            t = t + m.dw.bias[sl].reshape(1, n, 1, 1)
        t = F.max_pool2d(t, 3, 1, 1)
        t = F.conv2d(t, m.pw.weight[i:i + 1], None if m.norm_act else m.pw.bias[i:i + 1])
        if m.norm_act:
            t = torch.relu(bn_eval(t, _slice_bn(m.pw_norm[0], slice(i, i + 1))))
        B, _, H, W = t.shape
        A = torch.softmax(t.reshape(B, 1, H * W), dim=2).reshape(B, 1, H, W)
        outs.append(A * x_i + x_i)
    return torch.cat(outs, dim=1)


def _slice_bn(bn, sl):
    part = torch.nn.BatchNorm2d(sl.stop - sl.start, dtype=bn.weight.dtype)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(part, name).copy_(getattr(bn, name)[sl])
    return part


def _randomised(m, g):
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return randomise_norms(m, g)


@pytest.mark.parametrize("C,groups,norm_act,hw", [(16, 4, True, (8, 8)), (32, 1, True, (5, 7)),
                                                  (24, 8, False, (6, 6)), (12, 3, True, (1, 1))])
def test_forward_equals_the_official_equations(rng, C, groups, norm_act, hw):
    m = _randomised(ULSAM(C, groups, norm_act=norm_act, dtype=torch.float64), rng)
    x = torch.randn(2, C, *hw, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_equations(m, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("groups,hw", [(1, (4, 4)), (4, (7, 5)), (16, (32, 32))])
def test_one_softmax_map_per_subspace_summing_to_one(rng, groups, hw):
    m = _randomised(ULSAM(32, groups), rng)
    x = torch.randn(3, 32, *hw, generator=rng)
    A = m.attention(x)
    assert A.shape == (3, groups, *hw) and (A >= 0).all()
    torch.testing.assert_close(A.sum(dim=(2, 3)), torch.ones(3, groups))
    # every channel of subspace n is scaled by the same map: y / x - 1 = A_n
    ratio = (m(x) / x - 1).reshape(3, groups, 32 // groups, *hw)
    torch.testing.assert_close(ratio, A[:, :, None].expand_as(ratio), rtol=1e-3, atol=1e-4)


def test_subspaces_do_not_see_each_other(rng):
    m = _randomised(ULSAM(16, 4), rng)
    x = torch.randn(2, 16, 6, 6, generator=rng)
    y = x.clone()
    y[:, 4:8] = torch.randn(2, 4, 6, 6, generator=rng)  # change subspace 2 only
    out_x, out_y = m(x), m(y)
    assert torch.equal(out_x[:, :4], out_y[:, :4]) and torch.equal(out_x[:, 8:], out_y[:, 8:])
    assert not torch.equal(out_x[:, 4:8], out_y[:, 4:8])


@pytest.mark.parametrize("momentum,kept", [(0.1, 0.9), (0.9, 0.1)])
def test_bn_momentum_is_pytorchs(rng, momentum, kept):
    """PyTorch's momentum is the weight of the NEW batch: the official 0.9 keeps 10% of the running mean per
    step (the default 0.1 keeps 90%)."""
    m = ULSAM(8, 2, bn_momentum=momentum).train()
    bn = m.dw_norm[0]
    with torch.no_grad():
        bn.running_mean.fill_(1.0)
    x = torch.randn(4, 8, 5, 5, generator=rng)
    batch_mean = m.dw(x).mean(dim=(0, 2, 3)).detach()
    m(x)
    torch.testing.assert_close(bn.running_mean, kept * 1.0 + (1 - kept) * batch_mean)


def test_almost_the_identity_on_large_maps(rng):
    """Softmax weights average 1 / (H W): at 32 x 32 the multiplicative term is small almost everywhere."""
    m = ULSAM(16, 4).eval()
    x = torch.randn(2, 16, 32, 32, generator=rng)
    rel = (m(x) - x).abs() / x.abs().clamp_min(1e-6)
    assert rel.median() < 5 / (32 * 32)


@pytest.mark.parametrize("C,norm_act", [(16, True), (64, True), (64, False), (512, True)])
def test_parameter_count(C, norm_act):
    g = 4
    expected = C + C + (2 * C + 2 * g if norm_act else C + g)  # DW and PW weights; BN affine or conv biases
    assert count_params(ULSAM(C, g, norm_act=norm_act)) == expected


def test_importing_the_library_leaves_torchs_defaults_alone():
    """The official ulsam.py sets the CUDA default tensor type at import; nothing in the library may."""
    code = ("import torch, plugconv_lite.attention.ulsam; t = torch.empty(1); "
            "assert t.device.type == 'cpu' and t.dtype == torch.float32, (t.device, t.dtype)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kw,match", [(dict(groups=3), "groups=3 must divide channels=64"),
                                      (dict(groups=0), "groups=0 must be >= 1"),
                                      (dict(bn_momentum=1.5), "bn_momentum=1.5 must be <= 1")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ULSAM(64, **kw)
