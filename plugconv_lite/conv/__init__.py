"""Drop-in replacements for a k x k ``nn.Conv2d`` (the ``conv`` contract)."""
from .base import Conv2d, ConvArgs, ConvBase, conv_args, same_padding
from .pyconv import PyConv2d
from .psconv import MaskedPSConv2d, PSConv2d

__all__ = ["Conv2d", "ConvArgs", "ConvBase", "conv_args", "same_padding"]
__all__ += ["PyConv2d"]
__all__ += ["MaskedPSConv2d", "PSConv2d"]
