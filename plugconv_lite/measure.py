"""Cost of a model: parameters, FLOPs, latency, peak memory.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: it counts convolutions and matrix products (einsum
included, through the matmuls it lowers to) as 2 x multiply-accumulates, and ignores element-wise work (activations,
BN, gates, pooling). Latency is the median of repeated timings after a warm-up, with the inter-quartile range
(CUDA events on a GPU, ``perf_counter`` on a CPU). Peak memory is measured on CUDA only (NaN on a CPU).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils import flop_counter as _fc
from torch.utils.flop_counter import FlopCounterMode


def _register_cpu_flash_attention_flops() -> None:
    """``F.scaled_dot_product_attention`` on a CPU dispatches to ``_scaled_dot_product_flash_attention_for_cpu``,
    which torch's FLOP counter has no formula for (it would count 0). Count it as the GPU kernels are counted."""
    aten = torch.ops.aten
    for op, formula in (("_scaled_dot_product_flash_attention_for_cpu", "sdpa_flop"),
                        ("_scaled_dot_product_flash_attention_for_cpu_backward", "sdpa_backward_flop")):
        target = getattr(aten, op, None)
        if target is None or target in _fc.flop_registry or not hasattr(_fc, formula):
            continue
        if formula == "sdpa_flop":
            def count(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
                return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)
        else:
            def count(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
                return _fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
        _fc.register_flop_formula(target)(count)


_register_cpu_flash_attention_flops()


@dataclass
class Measurement:
    params: int
    flops: int                  # forward FLOPs for the whole input batch (2 x MACs, conv/matmul only)
    latency_ms: float           # median forward time for the whole batch
    latency_iqr_ms: float
    peak_memory_mb: float       # CUDA forward peak for this batch; NaN on a CPU
    batch_size: int
    device: str

    def as_dict(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers, such as DO-Conv's frozen identity, are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def count_flops(model: nn.Module, input_size=(1, 3, 32, 32), device=None) -> int:
    """Forward FLOPs of ``model`` on a zero input of ``input_size`` (eval mode, no grad)."""
    device = _device_of(model, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(model: nn.Module, input_size=(1, 3, 32, 32), device=None, warmup: int = 10, repeats: int = 50,
            channels_last: Optional[bool] = None) -> tuple[float, float, np.ndarray]:
    """(median ms, IQR ms, all samples ms) of an eval-mode forward pass on ``input_size``."""
    device = _device_of(model, device)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(input_size, device=device).contiguous(memory_format=fmt)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _sync(device)
            for _ in range(repeats):
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(x)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t0 = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.train(was_training)
    t = np.asarray(times)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return float(med), float(q3 - q1), t


def peak_memory_mb(model: nn.Module, input_size=(1, 3, 32, 32), device=None) -> float:
    """Peak CUDA memory (MB) of an eval forward pass, weights included; NaN off CUDA."""
    device = _device_of(model, device)
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model.eval()(torch.zeros(input_size, device=device))
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def saved_activation_mb(model: nn.Module, input_size=(1, 3, 32, 32), device=None,
                        nan_if_untrainable: bool = False) -> float:
    """Memory (MB) of the tensors autograd keeps for the backward pass of one training-mode forward on
    ``input_size``: the activation memory training needs, which (unlike ``peak_memory_mb``) can be measured on any
    device. Each storage counts once; the parameters, buffers and the input do not count. Buffers (BN statistics) are
    restored afterwards, and the model's train/eval mode too. ``nan_if_untrainable``: NaN instead of the
    ``ValueError`` of a model that cannot train on this input (a BatchNorm on pooled features at batch 1)."""
    device = _device_of(model, device)
    x = torch.randn(input_size, device=device, requires_grad=True)
    excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), x)}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    buffers = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.train()(x)
    except ValueError:
        if not nan_if_untrainable:
            raise
        return float("nan")
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
    return sum(kept.values()) / 2 ** 20


def measure(model: nn.Module, input_size=(1, 3, 32, 32), device=None, warmup: int = 10, repeats: int = 50,
            timing: bool = True) -> Measurement:
    """Parameters, FLOPs, latency (median and IQR) and peak memory of ``model`` on ``input_size``.

    ``device`` moves the model there first (default: where its parameters are). ``timing=False`` skips the
    latency measurement (NaN), for when only the arithmetic is wanted.
    """
    device = _device_of(model, device)
    model = model.to(device)
    med = iqr = float("nan")
    if timing:
        med, iqr, _ = latency(model, input_size, device, warmup, repeats)
    return Measurement(count_params(model), count_flops(model, input_size, device), med, iqr,
                       peak_memory_mb(model, input_size, device), int(input_size[0]), str(device))


def compare(models: Mapping[str, nn.Module], baseline: Optional[str] = None, input_size=(1, 3, 32, 32), device=None,
            warmup: int = 10, repeats: int = 50, timing: bool = True, rounds: int = 7):
    """A pandas DataFrame of ``measure`` for each named model, with ratios against ``baseline`` (default: first).

    Latency is measured in ``rounds`` interleaved rounds (every model once per round, after its own warm-up), so a
    machine that slows down or speeds up affects all models alike. ``latency_ms`` is the median over all timings;
    ``latency_ms_ratio`` the median of the per-round ratios to the baseline, and ``ratio_low`` / ``ratio_high``
    their smallest and largest value: where that range includes 1, the difference is inside the timing noise
    (``latency_statement`` says so in words).
    """
    import pandas as pd

    if not models:
        raise ValueError("models must hold at least one model")
    names = list(models)
    baseline = names[0] if baseline is None else baseline
    if baseline not in models:
        raise ValueError(f"baseline={baseline!r} must be one of {names}")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    rows = {n: measure(m, input_size, device, timing=False) for n, m in models.items()}
    per_round = {n: [] for n in names}
    if timing:
        samples = {n: [] for n in names}
        for r in range(rounds):
            for n in names:
                t = latency(models[n], input_size, device, warmup if r == 0 else 2, max(1, repeats // rounds))[2]
                samples[n].extend(t)
                per_round[n].append(float(np.median(t)))
        for n in names:
            q1, med, q3 = np.percentile(samples[n], [25, 50, 75])
            rows[n].latency_ms, rows[n].latency_iqr_ms = float(med), float(q3 - q1)
    df = pd.DataFrame({n: r.as_dict() for n, r in rows.items()}).T
    df = df.astype({"params": int, "flops": int, "latency_ms": float, "latency_iqr_ms": float,
                    "peak_memory_mb": float, "batch_size": int})
    df.insert(2, "MFLOPs", df["flops"] / 1e6)
    for col in ("params", "flops"):
        df[f"{col}_ratio"] = df[col] / df.loc[baseline, col]
    ratios = {n: np.asarray(per_round[n]) / np.asarray(per_round[baseline]) if timing else np.array([np.nan])
              for n in names}
    df["latency_ms_ratio"] = [float(np.median(ratios[n])) for n in names]
    df["ratio_low"] = [float(ratios[n].min()) for n in names]
    df["ratio_high"] = [float(ratios[n].max()) for n in names]
    df.attrs.update(baseline=baseline, rounds=rounds if timing else 0)
    df.index.name = "model"
    return df


class PerSampleLoop(nn.Module):
    """``module`` applied to one sample at a time, the outputs concatenated: the loop a per-sample-kernel module
    must NOT run. Timed against the module itself with ``compare`` (interleaved rounds), it measures what folding
    the batch into the groups of one convolution buys::

        pl.compare({"batched": m, "loop": PerSampleLoop(m)}, input_size=(64, 64, 32, 32))

    It shares ``module``'s parameters (no copy), so its outputs equal the module's sample by sample."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.module(x[i:i + 1]) for i in range(x.shape[0])])


def latency_statement(df, name: str) -> str:
    """One sentence on ``name``'s latency against the baseline of ``compare``'s table: a ratio where every
    interleaved round agrees on its direction, otherwise that the difference is inside the timing noise."""
    base, r = df.attrs.get("baseline", df.index[0]), df.loc[name]
    where = f"{r['device']}, batch {int(r['batch_size'])}"
    if not r["latency_ms_ratio"] == r["latency_ms_ratio"]:
        return f"{name}: latency not measured"
    span = f"x{r['ratio_low']:.2f} to x{r['ratio_high']:.2f} over {df.attrs.get('rounds', '?')} interleaved rounds"
    if r["ratio_low"] <= 1.0 <= r["ratio_high"]:
        return (f"{name} vs {base} ({where}): no latency difference beyond the timing noise "
                f"(per-round ratios {span}).")
    return f"{name} takes x{r['latency_ms_ratio']:.2f} the latency of {base} ({where}; {span})."


def summary(model: nn.Module, input_size=(1, 3, 32, 32), depth: int = 3, **kw) -> str:
    """A human-readable layer table (torchinfo)."""
    from torchinfo import summary as _summary

    return str(_summary(model, input_size=input_size, depth=depth, verbose=0,
                        col_names=("output_size", "num_params", "mult_adds"), **kw))
