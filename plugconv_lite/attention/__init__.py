"""Feature-refinement modules (the ``attention`` contract): (B, C, H, W) -> (B, C, H, W)."""
from .se import SEModule

__all__ = ["SEModule"]
