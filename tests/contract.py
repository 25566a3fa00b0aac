"""Contract checks shared by every module's tests (and run over the whole registry in test_contracts.py)."""
from __future__ import annotations

import torch
import torch.nn as nn

SIZES = [(1, 1), (2, 3), (7, 5), (8, 8), (17, 9)]


def reference_shape(c_out, h, w, k, stride):
    return tuple(nn.Conv2d(1, c_out, k, stride, k // 2)(torch.zeros(1, 1, h, w)).shape[1:])


def check_conv_shapes(factory, c_in=16, c_out=32, k=3, strides=(1, 2), sizes=SIZES, **kw):
    for s in strides:
        m = factory(c_in, c_out, k, stride=s, **kw).eval()
        for h, w in sizes:
            y = m(torch.randn(2, c_in, h, w))
            assert tuple(y.shape[1:]) == reference_shape(c_out, h, w, k, s), (s, h, w, tuple(y.shape))


def check_attention_shapes(factory, channels=32, sizes=SIZES, **kw):
    m = factory(channels, **kw).eval()
    for h, w in sizes:
        x = torch.randn(2, channels, h, w)
        assert m(x).shape == x.shape


def check_gradients(module: nn.Module, x: torch.Tensor):
    """Every trainable parameter receives a non-zero gradient, and so does the input."""
    module.train()
    x = x.clone().requires_grad_(True)
    module(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def perturb_zero_init(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter that is exactly zero (a zero-initialised gate: DANet's gamma, a zero-init last conv)
    small random values. Such a gate blocks the gradient to everything before it at initialisation, by design;
    the gradient check is about the graph, so it runs at a generic point instead."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def check_compile_and_export(module: nn.Module, x: torch.Tensor, atol=1e-5):
    """torch.compile (full graph) and torch.export reproduce the eager output."""
    module.eval()
    with torch.no_grad():
        expected = module(x)
        compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, atol=atol, rtol=1e-4)
        exported = torch.export.export(module, (x,)).module()
        torch.testing.assert_close(exported(x), expected, atol=atol, rtol=1e-4)


def check_bf16_autocast(module: nn.Module, x: torch.Tensor):
    module.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert torch.isfinite(y.float()).all()


def check_channels_last(module: nn.Module, x: torch.Tensor, atol=1e-5):
    """A channels-last input (what the trainer feeds on a GPU) gives the contiguous input's output and gradients."""
    module.train()
    xs = [x.clone().requires_grad_(True), x.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)]
    outs, grads = [], []
    for xi in xs:
        module.zero_grad(set_to_none=True)
        y = module(xi)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in module.parameters() if p.grad is not None] + [xi.grad])
    torch.testing.assert_close(outs[1].contiguous(), outs[0], atol=atol, rtol=1e-4)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b.contiguous(), a, atol=atol, rtol=1e-4)


def randomise_norms(m: nn.Module, g: torch.Generator) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (so a reference must apply them correctly); eval mode."""
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.weight.copy_(torch.randn(bn.num_features, generator=g))
                bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    return m.eval()


def bn_eval(t: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """An eval-mode BatchNorm2d written out."""
    return (t - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
        * bn.weight[:, None, None] + bn.bias[:, None, None]
