"""Drop-in replacements for a k x k ``nn.Conv2d`` (the ``conv`` contract)."""
from .base import Conv2d, ConvArgs, ConvBase, conv_args, same_padding
from .c2sp import C2spConv2d
from .dcdc import DCDCConv2d
from .doconv import DOConv2d
from .dynamic import CondConv2d, DynamicConv2d, ExpertConv2d
from .icconv import ICConv2d, parse_pattern, pattern_counts, pattern_to_json, patterns_from_zoo, preset_pattern
from .psconv import MaskedPSConv2d, PSConv2d
from .pyconv import PyConv2d
from .scconv import SCConv2d
from .spdconv import SPDConv2d, depth_to_space, space_to_depth

__all__ = ["C2spConv2d", "CondConv2d", "Conv2d", "ConvArgs", "ConvBase", "DCDCConv2d", "DOConv2d", "DynamicConv2d",
           "ExpertConv2d", "ICConv2d", "MaskedPSConv2d", "PSConv2d", "PyConv2d", "SCConv2d", "SPDConv2d", "conv_args",
           "depth_to_space", "parse_pattern", "pattern_counts", "pattern_to_json", "patterns_from_zoo",
           "preset_pattern", "same_padding", "space_to_depth"]
