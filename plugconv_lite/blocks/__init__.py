"""Whole residual / mobile blocks (the ``block`` contract): ``(in_channels, out_channels, stride=1, **hparams)``."""

__all__: list[str] = []

from .res2net import Res2NetBlock  # noqa: E402

__all__ += ["Res2NetBlock"]

from .cg import ContextGuidedBlock  # noqa: E402

__all__ += ["ContextGuidedBlock"]

from .sandglass import SandglassBlock, sandglass_hidden  # noqa: E402

__all__ += ["SandglassBlock", "sandglass_hidden"]
