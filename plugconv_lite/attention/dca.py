"""Connected attention (DCANet): the lookup the model builder uses for ``attn_connect=True``.

Ma et al.: "DCANet: Learning Connected Attentions for Convolutional Neural Networks", ECCV 2020, arXiv 2007.05099.
A connected attention module has the constructor ``(channels, prev_channels, **hparams)`` (``prev_channels``: the
width of the attention it connects to, None for the first block of the network), the class attribute
``uses_flow = True`` and the forward ``forward(x, flow=None)`` (``models/flow.py``).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_CONNECTED: dict[str, Callable[..., nn.Module]] = {}  # attention name -> its connected form


def connected_form(attn) -> Callable[..., nn.Module]:
    """The connected form of the attention ``attn`` (a registry name), or ``attn`` itself if it is already a
    connected attention class."""
    if getattr(attn, "uses_flow", False):
        return attn
    if isinstance(attn, str) and attn in _CONNECTED:
        return _CONNECTED[attn]
    raise ValueError(f"attn={attn!r} has no connected form for attn_connect=True; one of {sorted(_CONNECTED)}")
