"""Feature-refinement modules (the ``attention`` contract): (B, C, H, W) -> (B, C, H, W)."""
from .a2n import A2NModule
from .cat import CATModule, global_entropy_pool
from .cbam import CBAM
from .danet import ChannelAttention, DualAttention, PositionAttention
from .eca import ECAModule, adaptive_kernel_size
from .gc import GlobalContextBlock
from .sda import SelectiveDepthAttention
from .se import SEModule
from .sem import SEMModule
from .ulsam import ULSAM

__all__ = ["A2NModule", "CATModule", "CBAM", "ChannelAttention", "DualAttention", "ECAModule", "GlobalContextBlock",
           "PositionAttention", "SEMModule", "SEModule", "SelectiveDepthAttention", "ULSAM", "adaptive_kernel_size",
           "global_entropy_pool"]
