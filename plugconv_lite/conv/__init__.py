"""Drop-in replacements for a k x k ``nn.Conv2d`` (the ``conv`` contract)."""
from .base import Conv2d, ConvArgs, ConvBase, conv_args, same_padding

__all__ = ["Conv2d", "ConvArgs", "ConvBase", "conv_args", "same_padding"]
from .icconv import ICConv2d, parse_pattern, pattern_counts, pattern_to_json, patterns_from_zoo, preset_pattern

__all__ += ["ICConv2d", "parse_pattern", "pattern_counts", "pattern_to_json", "patterns_from_zoo", "preset_pattern"]
from .spdconv import SPDConv2d, depth_to_space, space_to_depth

__all__ += ["SPDConv2d", "depth_to_space", "space_to_depth"]
