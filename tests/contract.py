"""Contract checks shared by every module's tests (and run over the whole registry in test_contracts.py)."""
from __future__ import annotations

import copy
import re
import shutil

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
    """Every trainable parameter receives a non-zero gradient, and so does the input.

    A parameter that starts at exactly zero on purpose (the GC block's last layer, a residual scale gamma = 0)
    blocks the gradient to everything before it at initialisation, and only then; such parameters are moved off
    zero first, so the check sees which parameters the graph reaches, not the initial values."""
    module.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad and p.is_floating_point() and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
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
    """A channels-last input (what the trainer feeds on a GPU) gives the contiguous input's output and gradients, and
    so does the module converted as the trainer converts the model, ``.to(memory_format=torch.channels_last)`` (which
    refuses a 5-d parameter or buffer)."""
    module.train()
    converted = copy.deepcopy(module).to(memory_format=torch.channels_last)
    cl = x.clone().contiguous(memory_format=torch.channels_last)
    runs = [(module, x.clone()), (module, cl.clone()), (converted, cl.clone())]
    outs, grads = [], []
    for m, xi in runs:
        xi.requires_grad_(True)
        m.zero_grad(set_to_none=True)
        y = m(xi)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None] + [xi.grad])
    for i in (1, 2):
        torch.testing.assert_close(outs[i].contiguous(), outs[0], atol=atol, rtol=1e-4)
        for a, b in zip(grads[0], grads[i]):
            torch.testing.assert_close(b.contiguous(), a, atol=atol, rtol=1e-4)


def randomise_parameters(m: nn.Module, weight_std: float = 0.3, other_std: float = 0.5, seed: int = 0) -> nn.Module:
    """Every parameter drawn from a normal (matrices and kernels with ``weight_std``, vectors with ``other_std``), so
    that a reference computation must use each one correctly (initial values such as a LayerNorm at (1, 0) or zero
    biases hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (weight_std if p.dim() > 1 else other_std))
    return m


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


# --- torch.compile with the default backend (inductor) ---------------------------------------------------------------
# aot_eager (check_compile_and_export) traces the graph but runs eager kernels; inductor generates its own, and its
# gradients can differ from eager (avg_pool2d with ceil_mode gave 0.1-0.4 relative input-gradient errors). Compiling
# with inductor costs 10-50 s per module on a CPU, so the registry-wide test compiles the modules whose autograd
# graph holds an op of the kinds inductor lowers by hand (pooling, interpolation, unfold/fold, gather/scatter and
# indexing) or a custom autograd.Function. The rule reads the graph, so a new module that uses such an op is checked
# without anyone listing it; PLUGCONV_INDUCTOR_ALL=1 checks every module.
INDUCTOR_RISKY = re.compile(r"Pool|Upsample|Interpolate|Im2Col|Col2Im|Unfold|Fold|Gather|Scatter|Index|Take|"
                            r"GridSampler")


def inductor_risky_ops(module: nn.Module, x: torch.Tensor) -> list[str]:
    """The autograd nodes of ``module(x)`` (training mode) that the rule above selects, e.g. ['AvgPool2DBackward0'];
    custom autograd Functions appear as 'custom:<name>'. Empty: the module is left out of the inductor sweep."""
    module = copy.deepcopy(module).train()
    y = module(x.clone().requires_grad_(True))
    found, seen, stack = set(), set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.add(f"custom:{name}")
        elif INDUCTOR_RISKY.search(name):
            found.add(name)
        stack.extend(fn for fn, _ in node.next_functions)
    return sorted(found)


def have_cpp_compiler() -> bool:
    """Inductor compiles C++ on a CPU."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm().clamp_min(1e-12)).item()


def check_inductor_matches_eager(module: nn.Module, x: torch.Tensor, rtol: float = 1e-4) -> None:
    """One ``torch.compile`` (default backend, inductor) of ``module`` in training mode: its output, input gradient
    and every parameter gradient equal eager's (relative error of the norm < rtol) for a random projection loss."""
    torch._dynamo.reset()
    eager = module.train()
    compiled_module = copy.deepcopy(module)
    compiled = torch.compile(compiled_module, fullgraph=True)
    results = []
    for m, fn in ((eager, eager), (compiled_module, compiled)):
        m.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
        (y * weights).sum().backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        results.append((y.detach(), xi.grad, grads))
    (y_e, gx_e, gp_e), (y_c, gx_c, gp_c) = results
    errors = {"output": _rel_err(y_e, y_c), "input gradient": _rel_err(gx_e, gx_c)}
    assert gp_e.keys() == gp_c.keys()
    errors.update({f"grad of {n}": _rel_err(g, gp_c[n]) for n, g in gp_e.items()})
    bad = {k: f"{v:.2g}" for k, v in errors.items() if not v < rtol}
    assert not bad, f"inductor differs from eager (relative error): {bad}"


# --- surgery ---------------------------------------------------------------------------------------------------------

def floating_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]


def check_placed_like(module: nn.Module, device, dtype, training: bool) -> None:
    """Every floating tensor of ``module`` is on ``device`` in ``dtype``; every sub-module is in ``training`` mode."""
    for t in floating_tensors(module):
        assert t.device == torch.device(device) and t.dtype == dtype, (t.device, t.dtype)
    modes = {m.training for m in module.modules()}
    assert modes == {training}, f"modes {modes}, expected {training}"
