"""Whole residual / mobile blocks (the ``block`` contract): ``(in_channels, out_channels, stride=1, **hparams)``."""
from .cg import ContextGuidedBlock
from .coatnet import CoAtNetBlock
from .nextvit import NCB, NTB
from .res2net import Res2NetBlock
from .sandglass import SandglassBlock, sandglass_hidden
from .vovgscsp import GSBottleneck, VoVGSCSP

__all__ = ["CoAtNetBlock", "ContextGuidedBlock", "GSBottleneck", "NCB", "NTB", "Res2NetBlock", "SandglassBlock", "VoVGSCSP", "sandglass_hidden"]
