"""Memory layout for grouped convolutions on a CPU.

PyTorch's CPU convolutions (oneDNN) run grouped convolutions with large kernels and few channels per group several
times slower on contiguous NCHW tensors than on channels-last ones (PyConv's 5x5 to 9x9 levels: a PyConv ResNet-18
training step on a CPU was about 3x faster this way when we measured it). Modules made of such convolutions compute
in channels-last on a CPU and hand back the layout they were given. On a GPU, and for inputs already in
channels-last, nothing changes. (PSConv's 3x3 grouped convolutions gained nothing from it, so it does not use it.)
"""
from __future__ import annotations

import torch


def channels_last_on_cpu(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x in the layout to compute in, whether the output must be converted back to contiguous NCHW)."""
    if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last), True
    return x, False
