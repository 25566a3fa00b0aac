import pytest
import torch
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.attention import ChannelAttention, DualAttention, PositionAttention
from plugconv_lite.measure import count_params
from contract import perturb_zero_init


def _official_pam(m: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    """junfu1115/DANet encoding/nn/da_att.py PAM_Module.forward, written out: bmm of (B, N, d) queries with (B, d, N)
    keys, softmax over the last axis, V (B, C, N) times the transposed attention."""
    B, C, H, W = x.shape
    q = F.conv2d(x, m.query.weight, m.query.bias).reshape(B, -1, H * W).permute(0, 2, 1)
    k = F.conv2d(x, m.key.weight, m.key.bias).reshape(B, -1, H * W)
    attention = torch.softmax(torch.bmm(q, k), dim=-1)
    v = F.conv2d(x, m.value.weight, m.value.bias).reshape(B, -1, H * W)
    return m.gamma * torch.bmm(v, attention.permute(0, 2, 1)).reshape(B, C, H, W) + x


def _official_cam(gamma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """CAM_Module.forward as released: energy_new = max(energy) - energy."""
    B, C, H, W = x.shape
    X = x.reshape(B, C, -1)
    energy = torch.bmm(X, X.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    return gamma * torch.bmm(torch.softmax(energy_new, dim=-1), X).reshape(B, C, H, W) + x


def _double(m):
    return perturb_zero_init(m.double())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("C,hw", [(64, (8, 8)), (16, (5, 7)), (32, (1, 1))])
def test_pam_equals_the_official_forward(rng, fused, C, hw):
    m = _double(PositionAttention(C, reduction=8, divisor=1, fused=fused))  # divisor=1: the official C // 8
    assert m.qk_channels == C // 8
    x = torch.randn(2, C, *hw, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_pam(m, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("fused", [True, False])
def test_cam_equals_the_official_max_minus_energy_forward(rng, fused):
    m = _double(ChannelAttention(24, fused=fused))
    x = torch.randn(3, 24, 5, 6, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_cam(m.gamma, x), atol=1e-10, rtol=1e-10)


def test_softmax_of_max_minus_energy_is_softmax_of_minus_energy(rng):
    """The identity behind attend_to="dissimilar": a row-wise constant does not change a softmax."""
    X = torch.randn(4, 32, 49, generator=rng, dtype=torch.float64)
    E = X @ X.transpose(1, 2)
    torch.testing.assert_close(torch.softmax(E.amax(-1, keepdim=True) - E, -1), torch.softmax(-E, -1),
                               atol=1e-12, rtol=1e-12)
    S = ChannelAttention(32).double().attention(X.reshape(4, 32, 7, 7))
    torch.testing.assert_close(S, torch.softmax(-E, -1), atol=1e-12, rtol=1e-12)


def test_cam_dissimilar_attends_least_to_itself_and_similar_most(rng):
    """softmax(-E) puts the least weight on the most similar channel (usually the channel itself, E_ii = |x_i|^2);
    the paper's softmax(E) the most. Checked on channels with equal norms, where E_ii is the row's maximum."""
    X = torch.nn.functional.normalize(torch.randn(2, 16, 36, generator=rng, dtype=torch.float64), dim=-1)
    x = X.reshape(2, 16, 6, 6)
    dis = ChannelAttention(16).double().attention(x)
    sim = ChannelAttention(16, attend_to="similar").double().attention(x)
    eye = torch.arange(16)
    assert (dis[:, eye, eye] == dis.amin(-1)).all()
    assert (sim[:, eye, eye] == sim.amax(-1)).all()
    torch.testing.assert_close(sim, torch.softmax(X @ X.transpose(1, 2), -1))


@pytest.mark.parametrize("name", ["pam", "cam", "danet"])
def test_identity_at_initialisation(rng, name):
    m = pl.create(name, 32)
    x = torch.randn(2, 32, 6, 5, generator=rng)
    assert torch.equal(m(x), x)
    assert all(not p.any() for n, p in m.named_parameters() if n.endswith("gamma"))


@pytest.mark.parametrize("fused", [True, False])
def test_pam_of_a_spatially_constant_map_is_constant(rng, fused):
    """All positions have the same query, key and value, so every attention row is uniform and the output at each
    position is the same: y = x + gamma * V."""
    m = perturb_zero_init(PositionAttention(16, fused=fused)).eval()
    x = torch.randn(3, 16, 1, 1, generator=rng).expand(3, 16, 7, 5).contiguous()
    y = m(x)
    torch.testing.assert_close(y, y[:, :, :1, :1].expand_as(y), atol=1e-6, rtol=1e-5)
    S = m.attention(x)
    torch.testing.assert_close(S, torch.full_like(S, 1 / 35))
    torch.testing.assert_close(y[:, :, 0, 0], x[:, :, 0, 0] + m.gamma * m.value(x)[:, :, 0, 0])


def test_pam_rows_are_distributions_over_positions(rng):
    m = PositionAttention(32)
    S = m.attention(torch.randn(2, 32, 4, 6, generator=rng))
    assert S.shape == (2, 24, 24) and (S >= 0).all()
    torch.testing.assert_close(S.sum(-1), torch.ones(2, 24))


def test_fused_and_explicit_paths_agree(rng):
    x = torch.randn(2, 64, 8, 8, generator=rng)
    for cls in (PositionAttention, ChannelAttention):
        a = perturb_zero_init(cls(64, fused=True))
        b = cls(64, fused=False)
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-4)


def test_danet_adds_both_attention_terms_to_one_identity(rng):
    m = perturb_zero_init(DualAttention(16, cam_kw={"attend_to": "similar"}))
    x = torch.randn(2, 16, 5, 5, generator=rng)
    expected = m.pam(x) + m.cam(x) - x
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)
    assert m.cam.attend_to == "similar"


@pytest.mark.parametrize("C", [16, 24, 32, 48, 64, 96, 128, 256, 512])
def test_width_rule_never_gives_an_empty_or_one_unit_query(C):
    d = PositionAttention(C).qk_channels
    assert 8 <= d <= C and d % 8 == 0
    if C & (C - 1) == 0:  # the CIFAR ResNets' widths: the official C // 8 from 64 channels up
        assert d == max(8, C // 8)


@pytest.mark.parametrize("C", [1, 3, 7])
def test_under_eight_channels_the_query_keeps_every_channel(C):
    """The official C // 8 is 0 here; ours is C."""
    assert PositionAttention(C).qk_channels == C


def test_parameter_count():
    C, d = 64, 8
    assert count_params(PositionAttention(C)) == 2 * (C * d + d) + C * C + C + 1
    assert count_params(ChannelAttention(C)) == 1
    assert count_params(DualAttention(C)) == count_params(PositionAttention(C)) + 1


def test_from_site_declines_maps_larger_than_max_resolution():
    model = pl.resnet18(width=16, attn="danet")
    plugged = [n for n, m in model.named_modules() if isinstance(m, DualAttention)]
    assert plugged == ["layer3.0.attn", "layer3.1.attn", "layer4.0.attn", "layer4.1.attn"]
    assert isinstance(model.layer1[0].attn, torch.nn.Identity)
    everywhere = pl.resnet18(width=16, attn="pam", attn_kw={"max_resolution": None})
    assert sum(isinstance(m, PositionAttention) for m in everywhere.modules()) == 8
    only_4x4 = pl.resnet18(width=16, attn="pam", attn_kw={"max_resolution": 4, "fused": False})
    mods = [m for m in only_4x4.modules() if isinstance(m, PositionAttention)]
    assert len(mods) == 2 and not mods[0].fused
    assert only_4x4(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_cam_has_no_site_rule():
    """CAM's cost is O(C^2 HW), a 1x1 conv's: it goes everywhere."""
    model = pl.resnet18(width=16, attn="cam")
    assert sum(isinstance(m, ChannelAttention) for m in model.modules()) == 8


def test_add_attention_skips_declined_sites():
    class Decliner(PositionAttention):
        @classmethod
        def from_site(cls, site, **kw):
            return None if site.name == "0" else cls(site.out_channels, **kw)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1))
    model, names = pl.add_attention(model, Decliner, where=lambda n, m: isinstance(m, torch.nn.Conv2d))
    assert names == ["1"]
    assert isinstance(model[0], torch.nn.Conv2d) and isinstance(model[1][1], Decliner)


@pytest.mark.parametrize("cls,kw,match", [
    (PositionAttention, dict(reduction=0.5), "reduction=0.5 must be >= 1"),
    (PositionAttention, dict(qk_channels=0), "qk_channels=0 must be >= 1"),
    (PositionAttention, dict(divisor=0), "divisor=0 must be >= 1"),
    (ChannelAttention, dict(attend_to="paper"), "attend_to='paper' must be one of"),
    (DualAttention, dict(pam_kw=[1]), "pam_kw=\\[1\\] must be a dict"),
    (DualAttention, dict(cam_kw={"attend_to": "x"}), "attend_to='x'"),
])
def test_bad_hyperparameters_raise(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(32, **kw)


def test_bad_max_resolution_raises():
    with pytest.raises(ValueError, match="max_resolution=0 must be >= 1"):
        pl.resnet18(width=16, attn="danet", attn_kw={"max_resolution": 0})


def test_device_and_dtype_are_passed_to_every_tensor():
    m = DualAttention(16, dtype=torch.float64)
    assert {p.dtype for p in m.parameters()} == {torch.float64}
