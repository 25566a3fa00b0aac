"""Drop-in replacements for a k x k ``nn.Conv2d`` (the ``conv`` contract)."""
from .base import Conv2d, ConvArgs, ConvBase, conv_args, same_padding
from .c2sp import C2spConv2d
from .dcd import DCDConv2d
from .dgc import DGConv2d
from .dcdc import DCDCConv2d
from .doconv import DOConv2d
from .drconv import DRConv2d, region_mask
from .dynamic import CondConv2d, DynamicConv2d, ExpertConv2d
from .gsconv import GSConv2d, interleave_halves
from .icconv import ICConv2d, parse_pattern, pattern_counts, pattern_to_json, patterns_from_zoo, preset_pattern
from .odconv import ODConv2d
from .psconv import MaskedPSConv2d, PSConv2d
from .pyconv import PyConv2d
from .scconv import SCConv2d
from .spdconv import SPDConv2d, depth_to_space, space_to_depth
from .weightnet import WeightNet2d

__all__ = ["C2spConv2d", "CondConv2d", "Conv2d", "ConvArgs", "ConvBase", "DCDCConv2d", "DCDConv2d", "DGConv2d",
           "DOConv2d", "DRConv2d", "DynamicConv2d", "ExpertConv2d", "GSConv2d", "ICConv2d", "MaskedPSConv2d", "ODConv2d",
           "PSConv2d", "PyConv2d", "SCConv2d", "SPDConv2d", "WeightNet2d", "conv_args", "depth_to_space",
           "parse_pattern", "pattern_counts", "pattern_to_json", "patterns_from_zoo", "preset_pattern",
           "interleave_halves", "region_mask", "same_padding", "space_to_depth"]
