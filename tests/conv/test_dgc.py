import pytest
import torch
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.conv import DGConv2d
from plugconv_lite.conv.dgc import inactive_channels
from plugconv_lite.measure import count_flops, count_params
from contract import bn_eval, check_conv_shapes, randomise_norms


def _official_equations(m: DGConv2d, x: torch.Tensor, inactive: int) -> torch.Tensor:
    """hellozhuo/dgc's DynamicMultiHeadConv (layers.py) written out: BN + ReLU, then per head a saliency vector,
    the channels at or below the n-th smallest zeroed, the input scaled per head and concatenated, one grouped conv
    over the heads' concatenated kernels, and the outputs interleaved (channel j of head h at j * heads + h)."""
    heads, O = m.heads, m.out_channels
    x = torch.relu(bn_eval(x, m.norm))
    s = x.mean(dim=(2, 3))
    masked, kernels = [], []
    for h in range(heads):
        g = torch.relu(torch.relu(s @ m.W1[h].T) @ m.W2[h].T + m.b2[h])
        if inactive > 0:
            threshold = g.topk(inactive, dim=1, largest=False).values.max(dim=1, keepdim=True).values
            g = torch.where(g <= threshold, torch.zeros_like(g), g)
        masked.append(x * g[:, :, None, None])
        kernels.append(m.weight[h::heads])  # head h's conv: our rows h, h + heads, ...
    out = F.conv2d(torch.cat(masked, 1), torch.cat(kernels, 0), None, m.stride, m.padding, m.dilation, heads)
    B, _, H, W = out.shape
    return out.reshape(B, heads, O // heads, H, W).transpose(1, 2).reshape(B, O, H, W)


def _module(rng, *args, p=0.0, **kw):
    m = randomise_norms(DGConv2d(*args, **kw).double(), rng)
    m.set_progress(p)
    return m


@pytest.mark.parametrize("c_in,c_out,k,stride,heads,p", [(16, 16, 3, 1, 4, 0.0), (16, 32, 3, 2, 4, 0.5),
                                                         (24, 12, 1, 2, 2, 1.0), (9, 6, 3, 1, 3, 0.3)])
def test_forward_equals_the_official_equations(rng, c_in, c_out, k, stride, heads, p):
    m = _module(rng, c_in, c_out, k, stride, heads=heads, p=p)
    x = torch.randn(2, c_in, 9, 7, generator=rng, dtype=torch.float64)
    expected = _official_equations(m, x, inactive_channels(p, c_in, m.gate_factor))
    with torch.no_grad():
        m.prune_at_inference = False
        torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-10)   # the dense (training) form
        m.prune_at_inference = True
        torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-10)   # the pruned inference form


@pytest.mark.parametrize("p", [0.2, 0.4, 0.75, 1.0])
@pytest.mark.parametrize("stride,hw", [(1, (8, 8)), (2, (9, 7)), (2, (1, 1))])
def test_pruned_inference_form_equals_the_training_form(rng, p, stride, hw):
    m = _module(rng, 16, 32, 3, stride, bias=True, p=p).eval()
    with torch.no_grad():
        m.bias.normal_(generator=rng)
    x = torch.randn(3, 16, *hw, generator=rng, dtype=torch.float64)
    x_hat, g = m._prepare(x)
    dense, pruned = m.forward_dense(x_hat, g), m.forward_pruned(x_hat, g)
    torch.testing.assert_close(pruned, dense, atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        assert m.kept_channels < 16 and torch.equal(m(x), pruned + m.bias[:, None, None])


@pytest.mark.parametrize("hw", [(8, 8), (2, 3)])
def test_both_dense_forms_are_the_same_function(rng, hw):
    """Per-sample kernels and the official per-head input copies: equal outputs and equal gradients."""
    m = _module(rng, 16, 32, 3, 1, p=0.5).train()
    x = torch.randn(3, 16, *hw, generator=rng, dtype=torch.float64)
    outs, grads = [], []
    for form in (m.dense_per_sample, m.dense_copies):
        m.zero_grad()
        x_hat, g = m._prepare(x)
        y = form(x_hat, g * m.mask(g))
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([q.grad.clone() for q in (m.weight, m.W1, m.W2, m.b2)])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_the_pruned_form_costs_the_kept_fraction_of_the_flops(rng):
    m = DGConv2d(64, 64, 3).eval()
    C, O, H, heads, C_r = 64, 64, 16, m.heads, m.C_r
    saliency = 2 * heads * 2 * C * C_r  # two einsums per head
    assert count_flops(m, (2, C, H, H)) == 2 * (2 * O * C * 9 * H * H + saliency)
    m.set_progress(1.0)
    K = m.kept_channels
    assert K == 16  # gate_factor 0.25 of 64 channels
    assert count_flops(m, (2, C, H, H)) == 2 * (2 * O * K * 9 * H * H + saliency)


def test_each_sample_output_equals_its_output_alone(rng):
    """Eval mode (BN uses its running statistics; in training mode the batch statistics couple the samples)."""
    m = _module(rng, 16, 32, 3, 2, p=0.6).eval()
    x = torch.randn(5, 16, 9, 7, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        for prune in (False, True):
            m.prune_at_inference = prune
            alone = torch.cat([m(x[i:i + 1]) for i in range(5)])
            torch.testing.assert_close(m(x), alone, atol=1e-12, rtol=1e-12)


def test_schedule_values_at_the_start_the_end_of_pruning_and_one():
    C, gf = 64, 0.25
    full = round(C * (1 - gf))  # 48 dropped, 16 kept
    assert inactive_channels(0.0, C, gf) == 0 and inactive_channels(1 / 12, C, gf) == 0
    assert inactive_channels(0.5, C, gf) == round(C * (1 - gf) * 1.5 * (0.5 - 1 / 12))
    assert inactive_channels(0.75, C, gf) == full and inactive_channels(1.0, C, gf) == full
    values = [inactive_channels(i / 1000, C, gf) for i in range(1001)]
    assert all(a <= b for a, b in zip(values, values[1:]))  # never un-prunes
    m = DGConv2d(C, C)
    for p, n in ((0.0, 0), (0.75, full), (1.0, full)):
        m.set_progress(p)
        assert int(m.inactive) == n and m.kept_channels == C - n


def test_a_fresh_module_prunes_nothing_and_a_checkpoint_keeps_the_schedule(rng):
    trained = _module(rng, 16, 16, p=1.0).eval()
    fresh = DGConv2d(16, 16).double().eval()
    assert fresh.kept_channels == 16
    fresh.load_state_dict(trained.state_dict())
    assert fresh.kept_channels == trained.kept_channels == 4
    x = torch.randn(2, 16, 6, 6, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))


def test_group_lasso_term_and_its_gradient(rng):
    m = _module(rng, 16, 32, p=0.0).train()
    x = torch.randn(4, 16, 6, 6, generator=rng, dtype=torch.float64)
    m(x)
    term = m.aux_loss()
    with torch.no_grad():
        x_hat = torch.relu(F.batch_norm(x, None, None, m.norm.weight, m.norm.bias, True, 0.0, m.norm.eps))
        g = m.saliency(x_hat)
    expected = m.lasso_lambda * sum(g[:, h].mean() for h in range(m.heads))
    torch.testing.assert_close(term, expected)
    assert m.aux_loss() is None  # read once: not counted twice
    term.backward()
    assert m.W1.grad.abs().sum() > 0 and m.W2.grad.abs().sum() > 0 and m.b2.grad.abs().sum() > 0
    with torch.no_grad():
        m(x)
    assert m.aux_loss() is None  # no term without a graph (evaluation)


def test_pruned_channels_get_no_gradient(rng):
    """Only the kernel columns of the channels a head keeps get a gradient from a sample (the paper's point)."""
    m = _module(rng, 16, 8, heads=2, p=1.0).train()
    x = torch.randn(1, 16, 5, 5, generator=rng, dtype=torch.float64)
    m(x).sum().backward()
    with torch.no_grad():
        x_hat, g = m._prepare(x)
        kept = m.mask(g)[0]  # (heads, C)
    # a kept channel still gets no gradient where its saliency or its (post-ReLU) input is exactly 0
    live = (g[0] > 0) & (x_hat[0].abs().sum(dim=(1, 2)) > 0)[None]
    grad = m.weight.grad.abs().sum(dim=(2, 3))  # (O, C)
    for h in range(2):
        assert (grad[h::2][:, kept[h] == 0] == 0).all()
        assert (grad[h::2][:, (kept[h] == 1) & live[h]] > 0).all()
        assert ((kept[h] == 1) & live[h]).sum() > 0
    assert kept.sum(1).tolist() == [4, 4]


def test_parameters_are_the_conv_plus_the_saliency_generators():
    C, O, k = 64, 128, 3
    m = DGConv2d(C, O, k)
    assert m.C_r == 8  # official: C // (16 / 2) for C < 80
    assert count_params(m) == O * C * k * k + m.heads * (2 * C * m.C_r + C) + 2 * C  # + the input BN
    assert DGConv2d(256, 256).C_r == 16 and DGConv2d(16, 16).C_r == 8  # 16 / 8 = 2 units rounded up to 8


def test_shapes_when_pruned():
    def pruned(*args, **kw):
        m = DGConv2d(*args, **kw)
        m.set_progress(1.0)
        return m

    check_conv_shapes(pruned)


@pytest.mark.parametrize("bad,match", [(dict(heads=3), "heads=3 must divide out_channels=32"),
                                       (dict(heads=0), "heads=0 must be >= 1"),
                                       (dict(gate_factor=0.0), "gate_factor=0.0 must be > 0"),
                                       (dict(gate_factor=1.5), "gate_factor=1.5 must be <= 1"),
                                       (dict(squeeze_rate=0.5), "squeeze_rate=0.5 must be >= 1"),
                                       (dict(lasso_lambda=-1.0), "lasso_lambda=-1.0 must be >= 0"),
                                       (dict(groups=2), "groups=2 must be 1"),
                                       (dict(pre_norm=1), "pre_norm=1 must be a bool")])
def test_bad_hyperparameters_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        DGConv2d(16, 32, **bad)


def test_registry_collects_the_lasso_of_every_dgc_in_a_network():
    model = pl.resnet18(width=8, conv="dgc", conv_where="all")
    modules = pl.registry.aux_loss_modules(model)
    assert len(modules) == 19  # 16 block convs + 3 shortcuts
    model.train()(torch.randn(2, 3, 32, 32))
    expected = sum(m._aux for m in modules)
    torch.testing.assert_close(pl.registry.aux_loss(model), expected)
    assert pl.registry.aux_loss(model) is None  # every term was read
    pl.registry.set_progress(model, 1.0)  # the trainer's call reaches every DGC
    assert all(m.kept_channels == m.in_channels // 4 for m in modules)


def test_each_head_has_its_own_saliency_and_owns_the_outputs_h_mod_heads(rng):
    """Perturbing head h's saliency generator changes g[:, h] only, and only the outputs o with o % heads == h."""
    m = _module(rng, 16, 32, 3, p=0.5).eval()
    x = torch.randn(2, 16, 7, 7, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        x_hat, g = m._prepare(x)
        y = m(x)
        h = 2
        m.W2[h].mul_(1.5)
        m.b2[h].add_(0.3)
        g2, y2 = m.saliency(x_hat), m(x)
    heads_changed = (g2 - g).abs().amax(dim=(0, 2)) > 0
    assert heads_changed.tolist() == [i == h for i in range(m.heads)]
    outputs_changed = (y2 - y).abs().amax(dim=(0, 2, 3)) > 0
    assert outputs_changed.tolist() == [o % m.heads == h for o in range(32)]


def test_group_lasso_reaches_the_trainer_and_the_schedule_ends_fully_pruned():
    """Trained through plugconv_lite.train: the history logs the lasso term, a large lasso_lambda drives the
    saliencies down compared with lasso_lambda = 0, and after training every DGC prunes C (1 - gate_factor)."""
    from plugconv_lite.data import synthetic_cifar100
    from plugconv_lite.profiles import PROFILES
    from plugconv_lite.train import train

    data = synthetic_cifar100(train=100, test=20, num_classes=10, quiet=True)
    profile = PROFILES["smoke"].with_(name="tiny", width=8, epochs=2, batch_size=25, lr=0.05, warmup_epochs=0.5,
                                      train_images=None, test_images=None)
    mean_g, logged = {}, {}
    for lam in (0.0, 10.0):
        torch.manual_seed(0)
        model = torch.nn.Sequential(DGConv2d(3, 16, stride=2, heads=2, lasso_lambda=lam),
                                    DGConv2d(16, 16, stride=2, lasso_lambda=lam),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
        history = train(model, data, profile, seed=0, progress=False)
        logged[lam] = [row["aux_loss"] for row in history]
        dgcs = [m for m in model.modules() if isinstance(m, DGConv2d)]
        assert all(m.inactive == round(m.in_channels * (1 - m.gate_factor)) for m in dgcs)
        assert all(m.aux_loss() is None for m in dgcs)  # every term was read by the trainer
        second = dgcs[1].eval()  # its saliencies on one fixed input
        with torch.no_grad():
            x = torch.randn(8, 16, 8, 8, generator=torch.Generator().manual_seed(1))
            mean_g[lam] = second.saliency(second._prepare(x)[0]).mean().item()
    assert logged[0.0] == [0.0, 0.0] and all(v > 0 for v in logged[10.0])
    assert mean_g[10.0] < 0.5 * mean_g[0.0], mean_g
