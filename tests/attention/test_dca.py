"""DCANet's connected attention (attention/dca.py): the connection zeroed is the unconnected network, the first block
has no fusion, size matching at every stage boundary, the official equations (models/resnet/resnet_*_dca.py of
13952522076/DCANet, encoded here independently), gradients to the connection, bad hyperparameters."""
import pytest
import torch
import torch.nn.functional as F

import plugconv_lite as pl
from contract import (check_bf16_autocast, check_channels_last, check_compile_and_export, check_gradients,
                      perturb_zero_init)
from plugconv_lite.attention.dca import ConnectedCBAM, ConnectedGC, ConnectedSE, connected_form
from plugconv_lite.models.flow import Flow

ATTNS = ["se", "cbam", "gc"]
CONNECTION = ("match", "fusion", ".p", "spatial_fusion_norm", "beta")  # the parameters the plain module lacks


def _randomise(net, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return net


def _connected_net(attn, width=8, fusion_norm=None, seed=0):
    torch.manual_seed(seed)
    kw = {} if fusion_norm is None else dict(attn_kw=dict(fusion_norm=fusion_norm))
    return _randomise(pl.resnet18(width=width, num_classes=10, attn=attn, attn_connect=True, **kw), seed)


def _record_flow(net, x):
    """What every block's attention received and passed on, in forward order."""
    seen = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, args: seen.append(("in", args[1].attn)))
             for i in range(1, 5) for b in getattr(net, f"layer{i}")]
    hooks += [b.attn.register_forward_hook(lambda m, args, out: seen.append(("out", args[1].attn)))
              for i in range(1, 5) for b in getattr(net, f"layer{i}")]
    net(x)
    for h in hooks:
        h.remove()
    return seen


# --- the defining property: the connection zeroed is the unconnected network --------------------------------------

@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("attn", ATTNS)
def test_zeroed_connection_equals_the_unconnected_network(attn, training):
    net = _connected_net(attn, fusion_norm=None if attn == "gc" else False)
    for m in net.modules():
        if hasattr(m, "zero_connection_"):
            m.zero_connection_()
    plain = pl.resnet18(width=8, num_classes=10, attn=attn)
    state = net.state_dict()
    extra = set(state) - set(plain.state_dict())
    assert extra and all(any(c in k for c in CONNECTION) for k in extra), sorted(extra)
    plain.load_state_dict({k: v for k, v in state.items() if k not in extra})  # the same weights, transplanted
    net.train(training), plain.train(training)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("attn", ATTNS)
def test_connected_network_differs_from_the_unconnected_one_once_connected(attn):
    """The property above could hold trivially if the connection were never used: here it is."""
    net = _connected_net(attn).eval()
    plain = pl.resnet18(width=8, num_classes=10, attn=attn).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if k in plain.state_dict()})
    x = torch.randn(2, 3, 32, 32)
    assert (net(x) - plain(x)).abs().max() > 1e-3


def test_gc_connection_starts_at_zero_so_a_new_dca_gc_network_is_the_gc_network():
    torch.manual_seed(0)
    net = pl.resnet18(width=8, num_classes=10, attn="gc", attn_connect=True, attn_kw=dict(zero_init_last=False))
    plain = pl.resnet18(width=8, num_classes=10, attn="gc", attn_kw=dict(zero_init_last=False))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if k in plain.state_dict()})
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net.eval()(x), plain.eval()(x), rtol=0, atol=0)


def test_official_fusion_norm_still_normalises_a_zeroed_connection():
    """fusion_norm=True (the official code): with alpha = 1, beta = b = 0 the descriptor is relu(LN(z)), not z."""
    torch.manual_seed(0)
    m = _randomise(ConnectedSE(16, prev_channels=16)).zero_connection_()
    x, prev = torch.randn(2, 16, 5, 5), torch.randn(2, 16)
    z = x.mean(dim=(2, 3))
    expected = x * m.excite(F.relu(m.fusion.norm(z)))[:, :, None, None]
    torch.testing.assert_close(m(x, Flow(attn=prev)), expected, rtol=0, atol=0)
    assert (m(x, Flow(attn=prev)) - m(x)).abs().max() > 1e-3


# --- the first block, and the threading ------------------------------------------------------------------------------

@pytest.mark.parametrize("attn", ATTNS)
def test_first_block_has_no_fusion_and_is_the_plain_attention(attn):
    net = _connected_net(attn)
    first = net.layer1[0].attn
    assert first.prev_channels is None
    assert not any(any(c in k for c in CONNECTION) for k, _ in first.named_parameters())
    plain = pl.create(attn, 8)
    plain.load_state_dict(first.state_dict())
    x = torch.randn(2, 8, 6, 6)
    flow = Flow()
    torch.testing.assert_close(first.eval()(x, flow), plain.eval()(x), rtol=0, atol=0)
    assert flow.attn is not None  # and it hands its state on
    later = net.layer1[1].attn.eval()  # without a flow, a later block is the first block of a network
    plain.load_state_dict({k: v for k, v in later.state_dict().items() if k in plain.state_dict()})
    torch.testing.assert_close(later(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("attn", ATTNS)
def test_size_matching_at_every_stage_boundary(attn):
    net = _connected_net(attn)
    widths = [8, 16, 32, 64]
    for i in range(4):
        b0, b1 = getattr(net, f"layer{i + 1}")
        assert b1.attn.prev_channels == widths[i] and b1.attn.match is None
        if i == 0:
            continue
        assert b0.attn.prev_channels == widths[i - 1]
        first_matching = next(b0.attn.match.parameters())
        assert first_matching.shape[:2] == (widths[i] if attn == "cbam" else b0.attn.match[0].out_features,
                                            widths[i - 1])
    seen = _record_flow(net.eval(), torch.randn(2, 3, 32, 32))
    passed = [a for io, a in seen if io == "out"]
    received = [a for io, a in seen if io == "in"]
    assert received[0] is None and all(r is p for r, p in zip(received[1:], passed[:-1]))
    for k, a in enumerate(passed):
        c, r = widths[k // 2], 32 >> (k // 2)
        if attn == "cbam":
            assert [t.shape for t in a] == [(2, c, r, r)] * 2
        else:
            assert a.shape == (2, c)


def test_a_connected_module_built_without_a_predecessor_refuses_one():
    m = ConnectedSE(16)
    with pytest.raises(ValueError, match="prev_channels=None"):
        m(torch.randn(1, 16, 4, 4), Flow(attn=torch.randn(1, 16)))


# --- the official equations ------------------------------------------------------------------------------------------

def _ln(v, ln):
    return F.layer_norm(v, v.shape[-1:], ln.weight, ln.bias, ln.eps)


def test_se_official_equations():
    """CSELayer: gap; att_fc = relu(LN(Linear)) on the previous gap * att; cat -> Conv2d(2, 1, 1) -> LN -> relu;
    SE fc; out = x * att, passed on gap * att."""
    torch.manual_seed(0)
    m = _randomise(ConnectedSE(32, prev_channels=16, divisor=1)).double()
    x, prev = torch.randn(2, 32, 5, 7, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    gap = x.mean(dim=(2, 3))
    pre = F.relu(_ln(prev @ m.match[0].weight.T + m.match[0].bias, m.match[1]))
    w = m.fusion.weight
    conv = F.conv2d(torch.stack((gap, pre), dim=1)[:, :, None], w.reshape(1, 2, 1, 1), m.fusion.bias)  # (B,1,1,C)
    u = F.relu(_ln(conv.reshape(2, 32), m.fusion.norm))
    att = torch.sigmoid(F.relu(u @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias)
    flow = Flow(attn=prev)
    torch.testing.assert_close(m(x, flow), x * att[:, :, None, None], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.attn, gap * att, rtol=1e-12, atol=1e-12)
    assert m.hidden == 32 // 16


def test_cbam_official_equations():
    """ChannelGate with att_fc = relu(BN(1x1 conv)) on the previous channel-refined map, one bias-free alpha conv
    + LN + relu for the avg and the max descriptor; SpatialGate with compress = [max; mean], the previous output
    avg-pooled by the resolution ratio, bnrelu(p1 compress(x') + p2 compress(prev)); passes (x', y) on."""
    torch.manual_seed(0)
    m = _randomise(ConnectedCBAM(32, prev_channels=16, divisor=1)).double().train()
    x = torch.randn(2, 32, 4, 6, dtype=torch.float64)
    x_prev, y_prev = torch.randn(2, 2, 16, 8, 12, dtype=torch.float64)
    mlp = lambda v: F.relu(v @ m.fc0.weight.T + m.fc0.bias) @ m.fc1.weight.T + m.fc1.bias  # noqa: E731
    bn = lambda v, b: F.batch_norm(v, None, None, b.weight, b.bias, True, 0.0, b.eps)  # noqa: E731  (train mode)
    pre = F.relu(bn(F.conv2d(x_prev, m.match[0].weight, m.match[0].bias), m.match[1]))
    alpha = lambda a, b: F.relu(_ln(m.fusion.weight[0] * a + m.fusion.weight[1] * b, m.fusion.norm))  # noqa: E731
    avg = alpha(x.mean(dim=(2, 3)), pre.mean(dim=(2, 3)))
    mx = alpha(x.amax(dim=(2, 3)), pre.amax(dim=(2, 3)))
    xc = x * torch.sigmoid(mlp(avg) + mlp(mx))[:, :, None, None]
    compress = lambda v: torch.cat((v.amax(dim=1, keepdim=True), v.mean(dim=1, keepdim=True)), 1)  # noqa: E731
    prev_s = F.avg_pool2d(y_prev, kernel_size=2, stride=2)
    bn2 = m.spatial_fusion_norm[0]
    s = F.relu(F.batch_norm(m.p[0] * compress(xc) + m.p[1] * compress(prev_s), None, None,
                            bn2.weight.flip(0), bn2.bias.flip(0), True, 0.0, bn2.eps))
    scale = torch.sigmoid(bn(F.conv2d(s, m.conv.weight.flip(1), padding=3), m.norm))
    flow = Flow(attn=(x_prev, y_prev))
    torch.testing.assert_close(m(x, flow), xc * scale, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.attn[0], xc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.attn[1], xc * scale, rtol=1e-12, atol=1e-12)


def test_gc_official_equations():
    """RContextBlock2d: softmax-pooled context + weight * att_fc(previous channel_add_term), att_fc =
    conv -> LN -> relu -> conv (C_prev -> C/16 -> C); out = x + channel_add_conv(...), passed on that term."""
    torch.manual_seed(0)
    m = _randomise(ConnectedGC(32, prev_channels=16, divisor=1)).double()
    x, prev = torch.randn(2, 32, 5, 3, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    a = torch.softmax(torch.einsum("c,bchw->bhw", m.w_k, x).reshape(2, -1), dim=1)
    context = torch.einsum("bcn,bn->bc", x.reshape(2, 32, -1), a)
    t = lambda v, s: F.relu(_ln(v @ s[0].weight.T + s[0].bias, s[1])) @ s[3].weight.T + s[3].bias  # noqa: E731
    term = t(context + m.beta * t(prev, m.match), m.channel_add)
    flow = Flow(attn=prev)
    torch.testing.assert_close(m(x, flow), x + term[:, :, None, None], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.attn, term, rtol=1e-12, atol=1e-12)
    assert m.match[0].out_features == 32 // 16


# --- gradients, contracts, bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attn", ATTNS)
def test_gradients_reach_every_parameter_including_the_connection(attn):
    net = _connected_net(attn)
    check_gradients(net, torch.randn(2, 3, 32, 32))
    fusion = [p for k, p in net.named_parameters() if any(c in k for c in CONNECTION)]
    assert fusion and all(p.grad.abs().sum() > 0 for p in fusion)


@pytest.mark.parametrize("attn", ATTNS)
def test_connected_network_compile_export_bf16_channels_last(attn):
    torch.manual_seed(0)  # initial weights (GC's beta moved off 0): large random ones make float32 rounding the test
    net = perturb_zero_init(pl.resnet18(width=8, num_classes=10, attn=attn, attn_connect=True))
    x = torch.randn(2, 3, 32, 32)
    check_channels_last(net, x)
    check_compile_and_export(net, x)
    check_bf16_autocast(net, x)


def test_connected_form_lookup():
    assert connected_form("se") is ConnectedSE and connected_form("cbam") is ConnectedCBAM
    assert connected_form("gc") is ConnectedGC and connected_form(ConnectedSE) is ConnectedSE


@pytest.mark.parametrize("factory, kw, match", [
    (ConnectedSE, dict(prev_channels=0), "prev_channels=0"),
    (ConnectedSE, dict(prev_channels=8.5), "prev_channels=8.5"),
    (ConnectedSE, dict(prev_channels=8, fusion_norm="yes"), "fusion_norm='yes'"),
    (ConnectedCBAM, dict(prev_channels=8, fusion_norm=1), "fusion_norm=1"),
    (ConnectedCBAM, dict(prev_channels=8, order="parallel"), "order='parallel'"),
    (ConnectedGC, dict(prev_channels=-1), "prev_channels=-1"),
    (ConnectedGC, dict(prev_channels=8, fusion="mul"), "fusion='mul'"),
    (ConnectedSE, dict(channels=0), "channels=0"),
])
def test_bad_hyperparameters_raise(factory, kw, match):
    kw = dict(channels=16) | kw
    with pytest.raises(ValueError, match=match):
        factory(**kw)
