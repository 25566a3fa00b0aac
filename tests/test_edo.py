import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import check_conv_shapes
from plugconv_lite import edo, experiments
from plugconv_lite.conv.icconv import ICConv2d, candidates, parse_pattern
from plugconv_lite.data import synthetic_cifar100
from plugconv_lite.profiles import PROFILES


def random_pattern(g, out_channels, D_max):
    cands = candidates(D_max)
    return [cands[i] for i in torch.randint(0, len(cands), (out_channels,), generator=g).tolist()]


def embed(conv: edo.SupernetConv2d, ic: ICConv2d) -> None:
    """Supernet weights that are zero except at each channel's own dilated taps (holding the IC-Conv's kernel)."""
    with torch.no_grad():
        conv.weight.zero_()
        for o, d in enumerate(ic.pattern):
            rows, cols = conv.taps(d)
            conv.weight[o][:, rows, cols] = ic.weight[o]


def test_supernet_conv_keeps_the_conv_contract_shape():
    check_conv_shapes(edo.SupernetConv2d)
    check_conv_shapes(edo.SupernetConv2d, D_max=2, k=5)
    c = edo.SupernetConv2d(4, 4, 3, D_max=4)
    assert c.kernel_size == (9, 9) and c.padding == (4, 4)


def test_candidate_is_the_supernet_masked_to_the_dilated_taps(rng):
    """The k x k dilated conv on the inherited taps equals the K x K supernet conv with every other tap zeroed."""
    c = edo.SupernetConv2d(3, 5, 3, stride=2, D_max=3)
    x = torch.randn(2, 3, 11, 9, generator=rng)
    K = c.kernel_size[0]
    for dh, dw in candidates(3):
        mask = torch.zeros(K, K)
        centre = K // 2
        for a in (-1, 0, 1):
            for b in (-1, 0, 1):
                mask[centre + a * dh, centre + b * dw] = 1
        w, pad = c.candidate((dh, dw))
        torch.testing.assert_close(F.conv2d(x, w, None, 2, pad, (dh, dw)),
                                   F.conv2d(x, c.weight * mask, None, 2, c.padding))


def test_dilation_errors_are_the_l1_distance_to_the_supernet_output(rng):
    c = edo.SupernetConv2d(3, 4, 3, D_max=2)
    x = torch.randn(2, 3, 8, 8, generator=rng)
    e = edo.dilation_errors(c, x)
    y_s = c(x)
    for j, d in enumerate(candidates(2)):
        w, pad = c.candidate(d)
        expected = (y_s - F.conv2d(x, w, None, 1, pad, d)).abs().sum(dim=(0, 2, 3))
        torch.testing.assert_close(e[j], expected)


def test_select_breaks_ties_towards_small_dilations():
    errors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.0]])  # 3 candidates x 2 channels
    assert edo.select(errors, [(1, 1), (1, 2), (2, 1)]) == [(2, 1), (1, 1)]


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_search_recovers_the_dilations_that_generated_the_data(rng, noise):
    """Data from a teacher conv with a known dilation per output channel; the supernet layer fitted to it (least
    squares: the trained supernet of a one-layer network); EDO must pick every channel's true dilation."""
    D_max, C, O = 3, 3, 9
    teacher = ICConv2d(C, O, 3, pattern=random_pattern(rng, O, D_max), D_max=D_max)
    x = torch.randn(16, C, 16, 16, generator=rng)
    with torch.no_grad():
        y = teacher(x)
        y = y + noise * y.std() * torch.randn(y.shape, generator=rng)
    supernet = edo.SupernetConv2d(C, O, 3, D_max=D_max)
    K = supernet.kernel_size[0]
    A = F.unfold(x, K, padding=supernet.padding).transpose(1, 2).reshape(-1, C * K * K)   # (B L, C K K)
    W = torch.linalg.lstsq(A, y.flatten(2).transpose(1, 2).reshape(-1, O)).solution       # (C K K, O)
    with torch.no_grad():
        supernet.weight.copy_(W.T.reshape(O, C, K, K))
    found = edo.search(nn.Sequential(supernet), [x])
    assert found["patterns"]["0"] == teacher.pattern


def test_search_names_every_layer_of_a_network_and_recovers_each_pattern(rng):
    model = pl.resnet18(width=4, conv=edo.SupernetConv2d, conv_kw={"D_max": 2})
    truth = {}
    for name, m in model.named_modules():
        if isinstance(m, edo.SupernetConv2d):
            ic = ICConv2d(m.in_channels, m.out_channels, 3, pattern=random_pattern(rng, m.out_channels, 2), D_max=2)
            embed(m, ic)
            truth[name] = ic.pattern
    found = edo.search(model, [torch.randn(4, 3, 32, 32, generator=rng)])
    assert set(found["patterns"]) == set(truth) == {s.name for s in model.sites
                                                      if s.kernel_size > 1 and s.role != "stem"}
    for name, pat in truth.items():
        assert found["patterns"][name] == pat, name
    assert found["errors"]["layer1.0.conv1"].shape == (4, 4)


def test_search_needs_a_supernet_and_data():
    with pytest.raises(ValueError, match="no SupernetConv2d"):
        edo.search(pl.resnet18(width=4), [torch.zeros(1, 3, 32, 32)])
    with pytest.raises(ValueError, match="no input batches"):
        edo.search(pl.resnet18(width=4, conv=edo.SupernetConv2d), [])


@pytest.mark.parametrize("kw,match", [(dict(D_max=0), "D_max=0 must be >= 1"),
                                      (dict(kernel_size=2), r"kernel_size \(h\)=2 must be odd"),
                                      (dict(groups=2), "must both be 1")])
def test_supernet_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        edo.SupernetConv2d(**(dict(in_channels=4, out_channels=4) | kw))


def test_supernet_schedule():
    full, share = edo.supernet_schedule(PROFILES["full"], 1 / 3)
    assert (full.epochs, share) == (10, 1.0) and full.warmup_epochs == PROFILES["full"].warmup_epochs
    smoke, share = edo.supernet_schedule(PROFILES["smoke"], 1 / 3)
    assert smoke.epochs == 1 and share == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="supernet_budget=0.0 must be > 0"):
        edo.supernet_schedule(PROFILES["smoke"], 0.0)


# ---------------------------------------------------------------------------------------------------------------
# The experiments' preparation mechanism, and EDO through it

TINY = PROFILES["smoke"].with_(width=4, batch_size=50, train_images=200, test_images=100)


@pytest.fixture
def tiny_data():
    return synthetic_cifar100(train=400, test=200, num_classes=10, quiet=True)


def test_merge_kw_is_recursive_and_pure():
    base = {"conv": "icconv", "conv_kw": {"D_max": 2, "x": 1}}
    out = experiments.merge_kw(base, {"conv_kw": {"patterns": {"a": "plain"}, "x": 2}})
    assert out == {"conv": "icconv", "conv_kw": {"D_max": 2, "x": 2, "patterns": {"a": "plain"}}}
    assert base == {"conv": "icconv", "conv_kw": {"D_max": 2, "x": 1}}


def test_prepare_runs_once_is_stored_atomically_and_feeds_the_config(tmp_path, tiny_data, monkeypatch):
    calls = []

    def fake(profile, data, *, build, model_kw, seed, device, checkpoint, progress, reduction):
        calls.append(reduction)
        assert len(data.train_y) == 200 and build(model_kw) is not None
        return {"model_kw": {"attn_kw": {"reduction": reduction}}, "note": "provenance"}

    monkeypatch.setitem(experiments.PREPARES, "fake", fake)
    v = experiments.Variant("se_prepared", {"attn": "se", "attn_kw": {"divisor": 1}}, prepare="fake",
                            prepare_kw={"reduction": 4})
    kw, art = experiments.prepare(v, TINY, data=tiny_data, store=tmp_path, progress=False)
    assert kw == {"attn": "se", "attn_kw": {"divisor": 1, "reduction": 4}} and calls == [4]
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and files[0].parent.name == "prepare" and not list(tmp_path.rglob("*.tmp"))
    assert json.loads(files[0].read_text())["output"]["note"] == "provenance"
    again = experiments.prepare(v, TINY, data=tiny_data, store=tmp_path, progress=False)
    assert calls == [4] and again[1]["date"] == art["date"]  # reused, not re-run

    rec = experiments.experiment(v, TINY, 0, data=tiny_data, store=tmp_path, progress=False)
    assert calls == [4]  # experiment() prepares through the store too
    assert rec["config"]["model_kw"]["attn_kw"]["reduction"] == 4
    assert rec["config"]["prepare"] == {"name": "fake", "config_hash": art["config_hash"]}
    assert rec["prepare"]["artefact"] == files[0].name

    v2 = experiments.Variant("se_prepared", v.model_kw, prepare="fake", prepare_kw={"reduction": 8})
    kw2, art2 = experiments.prepare(v2, TINY, data=tiny_data, store=tmp_path, progress=False)
    assert calls == [4, 8] and art2["config_hash"] != art["config_hash"] and kw2["attn_kw"]["reduction"] == 8


def test_variant_without_prepare_keeps_its_config_hash(tmp_path, tiny_data):
    v = experiments.Variant("se", {"attn": "se"})
    assert experiments.prepare(v, TINY, data=tiny_data, store=tmp_path) == ({"attn": "se"}, None)
    rec = experiments.experiment(v, TINY, 0, data=tiny_data, store=tmp_path, progress=False)
    assert "prepare" not in rec["config"] and not list(tmp_path.rglob("prepare"))


def test_unknown_prepare_raises():
    with pytest.raises(ValueError, match="prepare='nope' must be one of"):
        experiments.register_experiment("x", [experiments.Variant("v", prepare="nope")])


def test_edo_end_to_end_through_the_experiment_machinery(tmp_path, tiny_data):
    v = experiments.Variant("icconv", {"conv": "icconv"}, prepare="edo",
                            prepare_kw={"D_max": 2, "supernet_budget": 0.5, "search_images": 100})
    kw, art = experiments.prepare(v, TINY, data=tiny_data, store=tmp_path, progress=False)
    out = art["output"]
    patterns = kw["conv_kw"]["patterns"]
    model = v.build(TINY, 10, model_kw=kw)
    searched = [s for s in model.sites if s.kernel_size > 1 and s.role != "stem"]
    assert set(patterns) == {s.name for s in searched} == set(out["patterns_per_channel"])
    for s in searched:
        m = model.get_submodule(s.name)
        assert isinstance(m, ICConv2d) and m.D_max == 2 and m.blocked
        per_channel = parse_pattern(out["patterns_per_channel"][s.name], s.out_channels, 2)
        assert m.pattern == sorted(per_channel)  # the searched channels, grouped by dilation
    assert out["supernet"]["epochs"] == 1 and out["supernet"]["train_images"] == 100  # half the budget
    assert out["search"]["images"] == 50 and art["profile"] == "smoke" and art["data"]["source"] == "synthetic"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_search_and_plug_into_a_foreign_network_by_module_name(rng):
    """swap_convs names sites after the modules, so a search on any network feeds ICConv2d.from_site directly."""
    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                             nn.ReLU(), nn.Conv2d(8, 4, 1))
    supernet, names = pl.swap_convs(net(), edo.SupernetConv2d, conv_kw={"D_max": 2})
    assert names == ["0", "2"]
    found = edo.search(supernet, [torch.randn(2, 3, 12, 12, generator=rng)])
    ic, _ = pl.swap_convs(net(), "icconv", conv_kw={"patterns": found["patterns"], "D_max": 2})
    assert [ic.get_submodule(n).pattern for n in names] == [found["patterns"][n] for n in names]
    assert ic(torch.randn(1, 3, 12, 12)).shape == (1, 4, 6, 6)
