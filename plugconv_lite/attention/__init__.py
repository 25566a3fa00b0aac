"""Feature-refinement modules (the ``attention`` contract): (B, C, H, W) -> (B, C, H, W)."""
from .a2n import A2NModule
from .cat import CATModule, global_entropy_pool
from .cbam import CBAM
from .dca import AttentionFusion, ConnectedCBAM, ConnectedGC, ConnectedSE, connected_form
from .danet import ChannelAttention, DualAttention, PositionAttention
from .eca import ECAModule, adaptive_kernel_size
from .gc import GlobalContextBlock
from .se import SEModule
from .sem import SEMModule
from .ulsam import ULSAM

__all__ = ["A2NModule", "AttentionFusion", "CATModule", "CBAM", "ChannelAttention", "ConnectedCBAM", "ConnectedGC",
           "ConnectedSE", "DualAttention", "ECAModule", "GlobalContextBlock",
           "PositionAttention", "SEMModule", "SEModule", "ULSAM", "adaptive_kernel_size", "connected_form",
           "global_entropy_pool"]
