"""Efficient Dilation Optimization (EDO): the dilation search of Inception Convolution. Liu et al.: "Inception
Convolution with Efficient Dilation Search", arXiv 2012.13587 (2020).

The authors released the searched patterns but not the search code, so this is the book's reconstruction from the
paper's description. What the paper states: every k x k conv to be searched is expanded to cover the largest
dilation, i.e. a dense K x K kernel with K = (k - 1) D_max + 1 (9 x 9 for k = 3, D_max = 4); this *supernet* is
trained; then, layer by layer and output channel by output channel, the dilation (d_h, d_w) is chosen whose k x k
sub-kernel (the supernet's weights at the taps of that dilation) reproduces the supernet's output with the smallest
L1 error on data:

    d*(o) = argmin_d  E_x | (W_s[o] * x) - (W_s[o] |_d  *_d  x) |_1,

where W_s[o] (C, K, K) is output channel o's supernet kernel, W_s[o]|_d its k x k taps {c + d_h i} x {c + d_w j}
(c = the centre, i, j in -(k-1)/2..(k-1)/2) and ``*_d`` the conv with dilation d. Finally the network with the
chosen per-channel dilations (Inception Convolution, ``ICConv2d``) is trained from scratch.

Our interpretation, where the paper leaves details open (the chapter lists them too):

* the supernet is the backbone with every searched conv replaced by ``SupernetConv2d`` (the same stride, "same"
  padding for K), trained with the book's recipe for a fraction ``supernet_budget`` of the training budget of the
  profile (default 1/3: 10 of 30 epochs in the full profile);
* the expectation is an average over ``search_images`` training images (no augmentation), every output position,
  with BN in eval mode; every layer is scored on the supernet's own activations in one forward pass (layers are
  chosen independently, no re-evaluation after a choice);
* ties go to the lexicographically smallest (d_h, d_w), so (1, 1) wins ties;
* the searched channels are grouped by dilation (the paper "rearranges the filters" the same way) and the searched
  network is trained from scratch with the experiment's recipe and seeds; the search itself runs once (seed 0).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_float, check_int, check_odd
from .conv.base import conv_args
from .conv.icconv import Dilation, candidates, pattern_to_json
from .data import Dataset, DeviceLoader
from .measure import count_flops, count_params
from .profiles import Profile
from .train import train


class SupernetConv2d(nn.Conv2d):
    """The EDO supernet's stand-in for a k x k conv: a dense K x K conv, K = (k - 1) D_max + 1, with the same
    stride and an output of the same shape (padding p + (D_max - 1)(k - 1) / 2, p = the k x k conv's padding).
    Its K x K kernel contains the taps of every dilation (d_h, d_w) in 1..D_max."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, D_max: int = 4):
        a = conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        for axis, k in zip("hw", a.kernel_size):
            check_odd(f"kernel_size ({axis})", k)
        if a.dilation != (1, 1) or a.groups != 1:
            raise ValueError(f"dilation={a.dilation} and groups={a.groups} must both be 1 in an EDO supernet")
        D_max = check_int("D_max", D_max, min_value=1)
        K = tuple((k - 1) * D_max + 1 for k in a.kernel_size)
        pad = tuple(p + (D_max - 1) * (k - 1) // 2 for p, k in zip(a.padding, a.kernel_size))
        super().__init__(a.in_channels, a.out_channels, K, a.stride, pad, 1, 1, a.bias)
        self.k, self.D_max, self.base_padding = a.kernel_size, D_max, a.padding
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def taps(self, d: Dilation) -> tuple[slice, slice]:
        """Row and column slices of the K x K kernel that hold the k x k taps of dilation ``d``."""
        out = []
        for k, K, di in zip(self.k, self.kernel_size, d):
            c, r = (K - 1) // 2, di * (k - 1) // 2
            out.append(slice(c - r, c + r + 1, di))
        return out[0], out[1]

    def candidate(self, d: Dilation) -> tuple[torch.Tensor, tuple[int, int]]:
        """The k x k sub-kernel W_s|_d (O, C, k, k) and the padding of its dilated conv."""
        rows, cols = self.taps(d)
        pad = tuple(p + (di - 1) * (k - 1) // 2 for p, di, k in zip(self.base_padding, d, self.k))
        return self.weight[:, :, rows, cols], pad

    def extra_repr(self) -> str:
        return super().extra_repr() + f", searched_kernel={self.k}, D_max={self.D_max}"


@torch.no_grad()
def dilation_errors(conv: SupernetConv2d, x: torch.Tensor, cands: Optional[list[Dilation]] = None,
                    y_s: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Summed L1 errors ``E[j, o] = sum_{b, h, w} |Y_s - Y_{d_j}|[b, o, h, w]`` of each candidate d_j on the layer
    input ``x``: one dilated k x k conv per candidate, on the supernet's inherited taps; shape (len(cands), O).
    ``y_s``: the supernet layer's output on ``x`` where already computed (``search`` passes it from a hook).

    Cost: k^2 D_max^2 taps per output element (144 for k = 3, D_max = 4) on top of the supernet's K^2 = 81.
    """
    cands = candidates(conv.D_max) if cands is None else cands
    if y_s is None:
        y_s = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
    errors = []
    for d in cands:
        w, pad = conv.candidate(d)
        errors.append((y_s - F.conv2d(x, w, conv.bias, conv.stride, pad, d)).abs().sum(dim=(0, 2, 3)))
    return torch.stack(errors)


def select(errors: torch.Tensor, cands: list[Dilation]) -> list[Dilation]:
    """Per output channel, the candidate with the smallest error (the first, i.e. smallest (d_h, d_w), on ties)."""
    return [cands[j] for j in errors.argmin(dim=0).tolist()]


@torch.no_grad()
def search(supernet: nn.Module, batches: Iterable[torch.Tensor]) -> dict:
    """Score every candidate dilation of every ``SupernetConv2d`` in ``supernet`` on the given input batches (one
    forward pass each, BN in eval mode) and choose each output channel's dilation.

    Returns ``{"patterns": {name: [(d_h, d_w), ...]}, "errors": {name: (n_cand, O) mean L1 errors}, "candidates":
    [...], "mean_abs_output": {name: (O,) mean |Y_s|}}``; names are the modules' dotted names (the plug-site names
    in this library's models).
    """
    convs = {n: m for n, m in supernet.named_modules() if isinstance(m, SupernetConv2d)}
    if not convs:
        raise ValueError("the model has no SupernetConv2d to search; build it with conv=SupernetConv2d")
    D_max = {m.D_max for m in convs.values()}
    if len(D_max) != 1:
        raise ValueError(f"the supernet's convs have different D_max values {sorted(D_max)}")
    cands = candidates(D_max.pop())
    sums = {n: 0.0 for n in convs}
    scale = {n: 0.0 for n in convs}
    counts = {n: 0 for n in convs}
    hooks = []
    for name, conv in convs.items():
        def hook(mod, args, out, name=name):
            sums[name] = sums[name] + dilation_errors(mod, args[0], cands, y_s=out)
            scale[name] = scale[name] + out.abs().sum(dim=(0, 2, 3))
            counts[name] += out.shape[0] * out.shape[2] * out.shape[3]
        hooks.append(conv.register_forward_hook(hook))
    was_training, tf32 = supernet.training, torch.backends.cudnn.allow_tf32
    supernet.eval()
    torch.backends.cudnn.allow_tf32 = False  # rank the candidates in full fp32 (the trainer enables TF32 on GPUs)
    try:
        for xb in batches:
            supernet(xb)
    finally:
        supernet.train(was_training)
        torch.backends.cudnn.allow_tf32 = tf32
        for h in hooks:
            h.remove()
    if not any(counts.values()):
        raise ValueError("search() got no input batches")
    errors = {n: (sums[n] / counts[n]).cpu() for n in convs}
    return {"patterns": {n: select(e, cands) for n, e in errors.items()}, "errors": errors, "candidates": cands,
            "mean_abs_output": {n: (scale[n] / counts[n]).cpu() for n in convs}}


# ---------------------------------------------------------------------------------------------------------------
# The experiment's preparation step: train the supernet, search, return the patterns (see experiments.prepare).

def supernet_schedule(profile: Profile, fraction: float) -> tuple[Profile, float]:
    """The supernet's share of the profile's training budget (epochs x images). Where the profile has enough
    epochs, whole epochs on all images (share 1); else one epoch on a class-balanced ``share`` of the images, and
    EDO also scales its test and search images by that share (the smoke profile's single epoch).
    Returns (the profile for the supernet, the image share)."""
    fraction = check_float("supernet_budget", fraction, min_value=0.0, max_value=1.0, min_inclusive=False)
    if profile.epochs * fraction >= 1:
        epochs = round(profile.epochs * fraction)
        return profile.with_(epochs=epochs, warmup_epochs=min(profile.warmup_epochs, epochs / 2)), 1.0
    return profile.with_(epochs=1), profile.epochs * fraction


def prepare(profile: Profile, data: Dataset, *, build: Callable[[dict], nn.Module], model_kw: dict, seed: int,
            device: torch.device, checkpoint: Optional[Path], progress: bool, D_max: int = 4,
            supernet_budget: float = 1 / 3, search_images: int = 1024, batch_size: int = 128) -> dict:
    """EDO for an experiment variant: train the supernet of the variant's network, search, return the patterns.

    ``build(model_kw)`` builds the variant's backbone; the supernet is that backbone with ``conv=SupernetConv2d``
    at the variant's ``conv_where`` sites. The output's ``model_kw`` (``{"conv_kw": {"patterns": ...}}``, counts
    format, one entry per site name) is merged into the variant's model kwargs by ``experiments.prepare``; the
    rest is the artefact's provenance (budgets, supernet accuracy, per-layer errors and dilation shares).
    """
    D_max = check_int("D_max", D_max, min_value=1)
    search_images = check_int("search_images", search_images, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    n_train, n_test = len(data.train_y), len(data.test_y)
    prof_s, share = supernet_schedule(profile, supernet_budget)
    fewer = lambda n: max(data.num_classes, round(n * share))  # noqa: E731  (class-balanced subsets)
    data_s = data if share == 1.0 else data.subset(fewer(n_train), fewer(n_test), seed=seed)
    torch.manual_seed(seed)
    supernet = build({**model_kw, "conv": SupernetConv2d, "conv_kw": {"D_max": D_max}})
    if progress:
        print(f"EDO: training the supernet ({count_params(supernet) / 1e6:.2f}M params, {D_max=}) for "
              f"{prof_s.epochs} epoch(s) on {len(data_s.train_y)} images")
    t0 = time.perf_counter()
    history = train(supernet, data_s, prof_s, seed=seed, device=device, checkpoint=checkpoint, progress=progress)
    t_train = time.perf_counter() - t0

    search_set = data.subset(min(fewer(search_images), n_train), None, seed=seed + 1)
    loader = DeviceLoader(search_set.train_x.to(device), search_set.train_y.to(device), batch_size, train=False)
    t0 = time.perf_counter()
    found = search(supernet.to(device), (xb for xb, _ in loader.epoch()))
    t_search = time.perf_counter() - t0
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)

    cands = found["candidates"]
    plain = cands.index((1, 1))
    layers = {}
    for name, pat in found["patterns"].items():
        e, scale = found["errors"][name], found["mean_abs_output"][name].mean().item()
        layers[name] = {"channels": len(pat), "dilated_share": sum(d != (1, 1) for d in pat) / len(pat),
                        "relative_l1_chosen": e.min(dim=0).values.mean().item() / scale,
                        "relative_l1_plain": e[plain].mean().item() / scale}
    final = history[-1]
    if progress:
        dilated = sum(v["dilated_share"] * v["channels"] for v in layers.values()) / sum(
            v["channels"] for v in layers.values())
        print(f"EDO: searched {len(layers)} layers on {len(search_set.train_y)} images in {t_search:.1f} s; "
              f"{dilated:.1%} of the channels chose a dilation other than (1, 1)")
    return {
        "model_kw": {"conv_kw": {"patterns": {n: pattern_to_json(p, "counts") for n, p in found["patterns"].items()},
                                 "D_max": D_max}},
        "patterns_per_channel": {n: pattern_to_json(p, "channels") for n, p in found["patterns"].items()},
        "layers": layers,
        "supernet": {"D_max": D_max, "epochs": prof_s.epochs, "train_images": len(data_s.train_y),
                     "budget": supernet_budget, "image_share": share,
                     "params": count_params(supernet), "flops": count_flops(supernet, (1, 3, 32, 32), device),
                     "final": {k: final[k] for k in ("test_top1", "test_top5", "train_loss")},
                     "train_time_s": t_train},
        "search": {"images": len(search_set.train_y), "candidates": [list(c) for c in cands],
                   "time_s": t_search, "criterion": "mean L1 |supernet output - candidate output| per channel"},
    }
