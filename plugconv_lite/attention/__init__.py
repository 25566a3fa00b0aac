"""Feature-refinement modules (the ``attention`` contract): (B, C, H, W) -> (B, C, H, W)."""
from .a2n import A2NModule
from .cat import CATModule, global_entropy_pool
from .cbam import CBAM
from .danet import ChannelAttention, DualAttention, PositionAttention
from .eca import ECAModule, adaptive_kernel_size
from .fcvit import FCViTMixer, GlobalContext
from .focal import FocalModulation
from .gc import GlobalContextBlock
from .se import SEModule
from .lscm import LSCM
from .msda import MultiScaleDilatedAttention
from .sem import SEMModule
from .sra import SpatialReductionAttention
from .ulsam import ULSAM

__all__ = ["A2NModule", "CATModule", "CBAM", "ChannelAttention", "DualAttention", "ECAModule", "FCViTMixer", "FocalModulation", "GlobalContext", "GlobalContextBlock", "LSCM", "MultiScaleDilatedAttention",
           "PositionAttention", "SEMModule", "SEModule", "SpatialReductionAttention", "ULSAM", "adaptive_kernel_size", "global_entropy_pool"]
