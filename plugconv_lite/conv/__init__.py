"""Drop-in replacements for a k x k ``nn.Conv2d`` (the ``conv`` contract)."""
from .base import Conv2d, ConvArgs, ConvBase, conv_args, same_padding
from .scconv import SCConv2d

__all__ = ["Conv2d", "ConvArgs", "ConvBase", "conv_args", "same_padding"]
__all__ += ["SCConv2d"]
