"""Feature-refinement modules (the ``attention`` contract): (B, C, H, W) -> (B, C, H, W)."""
from .a2n import A2NModule
from .cat import CATModule, global_entropy_pool
from .danet import ChannelAttention, DualAttention, PositionAttention
from .se import SEModule
from .sem import SEMModule

__all__ = ["A2NModule", "CATModule", "ChannelAttention", "DualAttention", "PositionAttention", "SEMModule",
           "SEModule", "global_entropy_pool"]
