"""Drop-in replacements for a k x k ``nn.Conv2d`` (the ``conv`` contract)."""
from .base import Conv2d, ConvArgs, ConvBase, conv_args, same_padding
from .c2sp import C2spConv2d
from .doconv import DOConv2d
from .scconv import SCConv2d

__all__ = ["C2spConv2d", "Conv2d", "ConvArgs", "ConvBase", "DOConv2d", "SCConv2d", "conv_args", "same_padding"]
