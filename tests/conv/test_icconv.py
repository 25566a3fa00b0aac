import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import check_bf16_autocast, check_compile_and_export, check_conv_shapes, check_gradients
from plugconv_lite.conv.icconv import (ICConv2d, candidates, parse_pattern, pattern_counts, pattern_to_json,
                                       patterns_from_zoo, preset_pattern)
from plugconv_lite.measure import count_flops, count_params


def random_pattern(g, out_channels, D_max=4):
    cands = candidates(D_max)
    return [cands[i] for i in torch.randint(0, len(cands), (out_channels,), generator=g).tolist()]


def reference(m: ICConv2d, x):
    """One dilated conv per output channel, in channel order: the definition, with no grouping or reordering."""
    outs = []
    for o, (dh, dw) in enumerate(m.pattern):
        pad = tuple(p + (d - 1) * (k - 1) // 2 for p, d, k in zip(m.padding, (dh, dw), m.kernel_size))
        b = None if m.bias is None else m.bias[o:o + 1]
        outs.append(F.conv2d(x, m.weight[o:o + 1], b, m.stride, pad, (dh, dw)))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel_size", [3, 5, (3, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_equals_per_channel_dilated_convs(rng, stride, kernel_size, bias):
    m = ICConv2d(6, 11, kernel_size, stride, bias=bias, pattern=random_pattern(rng, 11))
    assert not m.blocked  # a random order exercises the reordering path
    if bias:
        torch.nn.init.normal_(m.bias)
    x = torch.randn(2, 6, 13, 10, generator=rng)
    torch.testing.assert_close(m(x), reference(m, x))


def test_blocked_pattern_needs_no_reordering_and_matches_reference(rng):
    m = ICConv2d(8, 12, 3, pattern={"2,3": 5, "1,1": 4, "4,1": 3})
    assert m.blocked and m.perm is None
    assert m.pattern[:5] == [(2, 3)] * 5 and m.pattern[5:9] == [(1, 1)] * 4  # dict order = channel order
    x = torch.randn(2, 8, 9, 9, generator=rng)
    torch.testing.assert_close(m(x), reference(m, x))


def test_channel_order_follows_the_pattern(rng):
    """Channel o of the output is computed with pattern[o]: permuting the pattern and the weights together
    permutes the output channels the same way."""
    pat = random_pattern(rng, 10)
    m = ICConv2d(4, 10, 3, pattern=pat)
    perm = torch.randperm(10, generator=rng)
    m2 = ICConv2d(4, 10, 3, pattern=[pat[i] for i in perm.tolist()])
    with torch.no_grad():
        m2.weight.copy_(m.weight[perm])
    x = torch.randn(1, 4, 12, 12, generator=rng)
    torch.testing.assert_close(m2(x), m(x)[:, perm])


def test_plain_pattern_is_the_plain_conv(rng):
    m = ICConv2d(5, 7, 3, stride=2)
    conv = nn.Conv2d(5, 7, 3, 2, 1, bias=False)
    conv.weight.data.copy_(m.weight.data)
    x = torch.randn(2, 5, 9, 8, generator=rng)
    torch.testing.assert_close(m(x), conv(x))


def test_params_and_flops_equal_the_plain_conv():
    for pattern in ("plain", "uniform", "isotropic"):
        m = ICConv2d(16, 32, 3, pattern=pattern)
        plain = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        assert count_params(m) == count_params(plain)
        assert count_flops(m, (1, 16, 16, 16)) == count_flops(plain, (1, 16, 16, 16))


@pytest.mark.parametrize("pattern", ["uniform", "isotropic"])
def test_contract_with_multi_branch_patterns(rng, pattern):
    check_conv_shapes(ICConv2d, pattern=pattern)
    m = ICConv2d(16, 16, 3, pattern=pattern)
    check_gradients(m, torch.randn(2, 16, 9, 9, generator=rng))
    check_compile_and_export(m, torch.randn(2, 16, 8, 8, generator=rng))
    check_bf16_autocast(m, torch.randn(2, 16, 8, 8, generator=rng))


def test_reordering_path_compiles_and_exports(rng):
    m = ICConv2d(8, 8, 3, pattern=random_pattern(rng, 8))
    check_compile_and_export(m, torch.randn(2, 8, 8, 8, generator=rng))


def test_pattern_json_round_trip(rng):
    pat = random_pattern(rng, 9)
    for fmt in ("channels", "counts"):
        text = json.dumps(pattern_to_json(pat, fmt))
        back = parse_pattern(json.loads(text), 9)
        if fmt == "channels":
            assert back == pat
        else:  # counts keep the multiset, grouped into sorted blocks
            assert sorted(back) == sorted(pat) and back == sorted(pat)
            assert pattern_counts(back) == pattern_counts(pat)
    m = ICConv2d(3, 9, 3, pattern=pat)
    assert ICConv2d(3, 9, 3, pattern=json.loads(json.dumps(m.pattern_json()))).pattern == pat


def test_presets():
    assert preset_pattern("plain", 5) == [(1, 1)] * 5
    assert pattern_counts(preset_pattern("uniform", 32, 4)) == {f"{a},{b}": 2 for a, b in candidates(4)}
    assert pattern_counts(preset_pattern("isotropic", 8, 4)) == {"1,1": 2, "2,2": 2, "3,3": 2, "4,4": 2}


def test_official_zoo_keys_are_zero_based():
    zoo = [{"(0, 0)": 3, "(0, 1)": 1, "(3, 2)": 2}, {"(1, 1)": 4}]
    got = patterns_from_zoo(zoo, ["layer1.0.conv1", "layer1.0.conv2"])
    assert got == {"layer1.0.conv1": {"1,1": 3, "1,2": 1, "4,3": 2}, "layer1.0.conv2": {"2,2": 4}}
    assert ICConv2d(2, 6, pattern=got["layer1.0.conv1"]).pattern == [(1, 1)] * 3 + [(1, 2), (4, 3), (4, 3)]
    with pytest.raises(ValueError, match="pair up one to one"):
        patterns_from_zoo(zoo, ["only-one"])


def test_from_site_takes_the_pattern_of_its_own_site():
    model = pl.resnet18(width=4)
    names = [s.name for s in model.sites if s.kernel_size > 1 and s.role != "stem"]
    patterns = {n: {"1,1": s.out_channels - 1, f"{1 + i % 4},2": 1}
                for i, (n, s) in enumerate((s.name, s) for s in model.sites if s.name in names)}
    ic = pl.resnet18(width=4, conv="icconv", conv_kw={"patterns": patterns})
    for n in names:
        assert pattern_counts(ic.get_submodule(n).pattern) == pattern_counts(parse_pattern(patterns[n], len(
            ic.get_submodule(n).pattern)))
    # building a second model in the same process gives the same patterns (no global pattern index)
    again = pl.resnet18(width=4, conv="icconv", conv_kw={"patterns": patterns})
    assert all(again.get_submodule(n).pattern == ic.get_submodule(n).pattern for n in names)
    assert ic(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_from_site_missing_site_raises():
    with pytest.raises(ValueError, match="no entry for site 'layer1.0.conv1'"):
        pl.resnet18(width=4, conv="icconv", conv_kw={"patterns": {"layer9.conv": "plain"}})


@pytest.mark.parametrize("pattern,match", [
    ([[1, 1]] * 5, "pattern has 5 channels; it must have one per output channel"),
    ({"1,1": 7}, "pattern has 7 channels"),
    ([[1, 1]] * 7 + [[5, 1]], r"pattern\[7\]=\(5, 1\): dilations must be in 1..D_max=4"),
    ([[0, 1]] * 8, r"dilations must be in 1..D_max=4"),
    ({"(0, 0)": 8}, "pattern key '\\(0, 0\\)' must be a string 'd_h,d_w'"),
    ({"1,1": -1, "2,2": 9}, r"must be >= 0"),
    ([[1, 1, 1]] * 8, r"pattern\[0\]=\[1, 1, 1\] must be a pair of ints"),
    ([["1", "1"]] * 8, "must be a pair of ints"),
    ("spiral", "pattern='spiral' must be one of"),
    (3.5, "pattern=3.5 must be None, a preset name"),
])
def test_bad_patterns_raise(pattern, match):
    with pytest.raises(ValueError, match=match):
        ICConv2d(4, 8, 3, pattern=pattern)


@pytest.mark.parametrize("kw,match", [
    (dict(D_max=0), "D_max=0 must be >= 1"),
    (dict(kernel_size=4), r"kernel_size \(h\)=4 must be odd"),
    (dict(dilation=2), r"dilation=\(2, 2\) must be 1"),
    (dict(groups=2), "groups=2 must be 1"),
    (dict(pattern="uniform", D_max=2, out_channels=3), None),
])
def test_bad_hyperparameters_raise(kw, match):
    args = dict(in_channels=4, out_channels=8, kernel_size=3) | kw
    if match is None:
        ICConv2d(**args)  # valid: fewer channels than candidates is fine
        return
    with pytest.raises(ValueError, match=match):
        ICConv2d(**args)


def test_extra_repr_names_the_pattern():
    text = repr(ICConv2d(4, 4, pattern={"1,1": 3, "2,1": 1}))
    assert "D_max=4" in text and "(1,1): 3" in text and "(2,1): 1" in text


@pytest.mark.parametrize("stride", [1, 2])
def test_is_a_sparse_dense_conv_with_the_supernet_kernel(rng, stride):
    """IC-Conv equals one K x K conv (the EDO supernet's shape) whose kernel holds each channel's taps at the
    positions its dilation reads (SupernetConv2d.taps) and zeros elsewhere: the sub-network EDO scores."""
    from plugconv_lite.edo import SupernetConv2d
    pattern = [(1, 1), (2, 3), (3, 1), (1, 2), (3, 3)]
    m = ICConv2d(4, 5, 3, stride=stride, pattern=pattern, D_max=3)
    dense = SupernetConv2d(4, 5, 3, stride=stride, D_max=3)
    with torch.no_grad():
        dense.weight.zero_()
        for o, d in enumerate(pattern):
            rows, cols = dense.taps(d)
            dense.weight[o, :, rows, cols] = m.weight[o]
    x = torch.randn(2, 4, 11, 9, generator=rng)
    torch.testing.assert_close(dense(x), m(x), rtol=1e-5, atol=1e-5)
