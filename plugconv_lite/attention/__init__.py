"""Feature-refinement modules (the ``attention`` contract): (B, C, H, W) -> (B, C, H, W)."""
from .a2n import A2NModule
from .cat import CATModule, global_entropy_pool
from .cbam import CBAM
from .danet import ChannelAttention, DualAttention, PositionAttention
from .eca import ECAModule, adaptive_kernel_size
from .fcvit import FCViTMixer, GlobalContext
from .focal import FocalModulation
from .gc import GlobalContextBlock
from .lscm import LSCM
from .msda import MultiScaleDilatedAttention
from .sda import SelectiveDepthAttention
from .se import SEModule
from .sem import SEMModule
from .sra import SpatialReductionAttention
from .ulsam import ULSAM

__all__ = ["A2NModule", "adaptive_kernel_size", "CATModule", "CBAM", "ChannelAttention", "DualAttention",
           "ECAModule", "FCViTMixer", "FocalModulation", "global_entropy_pool", "GlobalContext",
           "GlobalContextBlock", "LSCM", "MultiScaleDilatedAttention", "PositionAttention",
           "SelectiveDepthAttention", "SEMModule", "SEModule", "SpatialReductionAttention", "ULSAM"]
