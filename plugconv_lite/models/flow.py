"""State that one part of a network hands to another during a forward pass, threaded by the model builder.

Most modules in this library see only their own input. Four see more:

* DCANet's connected attention reads what the previous block's attention computed, across stage boundaries too;
* SDA's stage attention weighs the outputs of every block of its stage (before their final ReLU);
* multi-scale heads (FPT, AFA) read the output of every stage.

DESIGN.md gives the threading of such state to the model builder: no module holds a reference to another, nothing
is global, no hooks. ``CifarResNet`` creates one ``Flow`` per forward pass, only when one of its options
(``attn_connect``, ``stage_attn``, ``head``) needs it, and hands it to every block; a network without those options
runs exactly the code it ran before, and its ``state_dict`` has the same keys.

The protocol, for a module that takes part:

* a block or a connected attention module has the class attribute ``uses_flow = True`` and a forward
  ``forward(x, flow=None)``; with ``flow=None`` it computes what it computes on its own (a connected attention then
  behaves as the first block of a network: no predecessor). It reads and updates the flow in place;
* a stage attention (registry kind ``"stage"``) is called with the list of its stage's block outputs and returns the
  stage's output;
* a head (registry kind ``"head"``) is called with the list of stage outputs and returns the logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn


@dataclass
class Flow:
    """What the blocks and stages of one forward pass hand on.

    ``attn``: what the latest connected attention passed on (DCANet: its recalibrated channel descriptor), None
    before the first one. ``blocks``: the current stage's block outputs before their final activation, collected
    only when ``keep_blocks`` (a stage attention needs them); cleared at the start of every stage. ``stages``: each
    finished stage's output, stage 1 first.
    """
    keep_blocks: bool = False
    attn: Optional[Any] = None
    blocks: list = field(default_factory=list)
    stages: list = field(default_factory=list)


def uses_flow(module: nn.Module) -> bool:
    """Whether ``module`` takes part in the protocol (is called as ``module(x, flow)``)."""
    return bool(getattr(module, "uses_flow", False))


def run_stage(blocks: nn.Sequential, x: torch.Tensor, flow: Flow, select: Optional[nn.Module] = None) -> torch.Tensor:
    """Run one stage's blocks in order, handing ``flow`` to those that use it; with a stage attention ``select``,
    its output (computed from the blocks' collected outputs) replaces the stage's. The result is appended to
    ``flow.stages``."""
    flow.blocks = []
    for block in blocks:
        x = block(x, flow) if uses_flow(block) else block(x)
    if select is not None:
        if len(flow.blocks) != len(blocks):  # the builder checks this too; a block that forgot to record would
            raise RuntimeError(  # silently shrink the depth the attention selects over
                f"a stage attention needs every block's output: {len(flow.blocks)} of {len(blocks)} recorded")
        x = select(flow.blocks)
    flow.stages.append(x)
    return x
