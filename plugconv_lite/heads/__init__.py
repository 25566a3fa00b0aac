"""Multi-scale classifier heads (the ``head`` contract): read every stage's output, return the logits.

A head replaces the backbone's global pool + linear classifier: ``pl.resnet18(head="afa")``. See
``models/flow.py`` for how the builder hands the stage outputs over.
"""
from .afa import AFAHead, afa_fuse
from .fpt import FPTHead, GroundingTransformer, RenderingTransformer, SelfTransformer

__all__ = ["afa_fuse", "AFAHead", "FPTHead", "GroundingTransformer", "RenderingTransformer", "SelfTransformer"]
