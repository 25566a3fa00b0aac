"""Receptive fields: the theoretical one (arithmetic) and the effective one (input gradients).

Theoretical: a stack of convolutions with kernel k_l, stride s_l, dilation d_l has receptive field
    r_l = r_{l-1} + d_l (k_l - 1) j_{l-1},   j_l = j_{l-1} s_l,   r_0 = 1, j_0 = 1
(j is the "jump": the input-pixel distance between neighbouring units of layer l).

Effective (Luo, Li, Urtasun, Zemel: "Understanding the Effective Receptive Field in Deep Convolutional Neural
Networks", NeurIPS 2016, arXiv 1701.04128): |d y_centre / d x| summed over channels and averaged over random
inputs, i.e. how much each input pixel actually moves the centre output unit.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ._validate import check_int


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Spatial output size of a convolution (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def receptive_field(layers: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """[(receptive field, jump)] after each layer of ``(kernel, stride[, dilation])`` tuples."""
    r, j, out = 1, 1, []
    for i, layer in enumerate(layers):
        k, s, d = (*layer, 1)[:3]
        check_int(f"layers[{i}] kernel", k, min_value=1)
        check_int(f"layers[{i}] stride", s, min_value=1)
        check_int(f"layers[{i}] dilation", d, min_value=1)
        r += d * (k - 1) * j
        j *= s
        out.append((r, j))
    return out


def sampling_offsets(kernel_size: int, dilation: int = 1) -> np.ndarray:
    """Offsets (from the centre) of the input pixels a k x k kernel with dilation d reads: shape (k*k, 2)."""
    c = (np.arange(kernel_size) - (kernel_size - 1) / 2) * dilation
    return np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)


def effective_receptive_field(module: nn.Module, input_size=(1, 16, 33, 33), n: int = 8, seed: int = 0,
                              position: Optional[tuple[int, int]] = None, train_mode: bool = False) -> np.ndarray:
    """|d y[:, :, centre] / d x| summed over channels, averaged over ``n`` random N(0, 1) inputs; max-normalised.

    ``module`` maps (B, C, H, W) to (B, C', H', W'); the output unit is at ``position`` (default: the centre of the
    output map). Returns an (H, W) numpy array in [0, 1]. Eval mode by default (BN uses running statistics).
    """
    g = torch.Generator().manual_seed(seed)
    was_training = module.training
    module.train(train_mode)
    p = next(module.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    total = torch.zeros(input_size[-2:], device=device)
    try:
        for _ in range(n):
            x = torch.randn(input_size, generator=g).to(device).requires_grad_(True)
            y = module(x)
            h, w = y.shape[-2:]
            i, j = position if position is not None else (h // 2, w // 2)
            y[:, :, i, j].sum().backward()
            total += x.grad.abs().sum(dim=(0, 1))
    finally:
        module.train(was_training)
    erf = total.cpu().numpy()
    return erf / erf.max() if erf.max() > 0 else erf


def erf_radius(erf: np.ndarray, mass: float = 0.9) -> float:
    """Radius (pixels, from the map's centre of mass) of the smallest disc holding ``mass`` of the ERF's total."""
    h, w = erf.shape
    yy, xx = np.mgrid[:h, :w]
    tot = erf.sum()
    cy, cx = (erf * yy).sum() / tot, (erf * xx).sum() / tot
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2).ravel()
    order = np.argsort(dist)
    cum = np.cumsum(erf.ravel()[order]) / tot
    return float(dist[order][np.searchsorted(cum, mass)])
