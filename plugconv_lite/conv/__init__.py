"""Drop-in replacements for a k x k ``nn.Conv2d`` (the ``conv`` contract)."""
from .base import Conv2d, ConvArgs, ConvBase, conv_args, same_padding

__all__ = ["Conv2d", "ConvArgs", "ConvBase", "conv_args", "same_padding"]

# DO-Conv (chapter 02) and C2sp (chapter 08)
from .doconv import DOConv2d  # noqa: E402
from .c2sp import C2spConv2d  # noqa: E402

__all__ += ["DOConv2d", "C2spConv2d"]
