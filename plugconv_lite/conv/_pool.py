"""r x r average pooling that keeps the partial windows at the bottom/right border, in a form torch.compile's
default backend (inductor) differentiates correctly.

``F.avg_pool2d(x, r, r, ceil_mode=True)`` averages a partial window over the pixels it covers. Its value is right
under every backend, but inductor's gradient of it is wrong for inputs whose size is not a multiple of r (torch
2.13 on a CPU: relative input-gradient errors of 0.1 to 0.4 in C2sp and SCConv; aot_eager is right). Here the
input is zero-padded to a multiple of r, summed per window (the same eager kernel and summation order, with
``divisor_override=1``) and divided by the number of real pixels in each window: in eager mode bit for bit what the
``ceil_mode`` call returns (tests/conv/test_pool.py), and nothing a compiler has to special-case (the inductor
contract test in tests/test_contracts.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def avg_pool_ceil(x: torch.Tensor, r: tuple[int, int]) -> torch.Tensor:
    """``F.avg_pool2d(x, r, r, ceil_mode=True)`` for x (B, C, H, W): (B, C, ceil(H / r_h), ceil(W / r_w))."""
    (rh, rw), (H, W) = r, x.shape[-2:]
    ph, pw = (-H) % rh, (-W) % rw
    if ph == 0 and pw == 0:
        return F.avg_pool2d(x, r, r)
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # the eager kernel sums and divides in fp32 and rounds once: so do we
    window_sum = F.avg_pool2d(F.pad(x, (0, pw, 0, ph)), r, r, divisor_override=1)
    count_h = (H - torch.arange(0, H, rh, device=x.device)).clamp(max=rh)   # real rows in each window row
    count_w = (W - torch.arange(0, W, rw, device=x.device)).clamp(max=rw)
    return (window_sum / (count_h[:, None] * count_w[None, :]).to(x.dtype)).to(dtype)
