"""Feature-refinement modules (the ``attention`` contract): (B, C, H, W) -> (B, C, H, W)."""
from .cbam import CBAM
from .eca import ECAModule, adaptive_kernel_size
from .gc import GlobalContextBlock
from .se import SEModule
from .ulsam import ULSAM

__all__ = ["CBAM", "ECAModule", "GlobalContextBlock", "SEModule", "ULSAM", "adaptive_kernel_size"]
