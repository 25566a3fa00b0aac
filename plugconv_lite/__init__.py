"""plugconv_lite: plug-and-play CNN modules and the CIFAR-100 testbed of the plugconv-lite book."""
from . import attention, blocks, conv  # noqa: F401  (registers the modules)
from .models import build as build_model, mobilenetv2, resnet18, resnet20, resnet56
from .models.plugs import PlugSite
from .registry import available, create, get, register, set_progress

__version__ = "0.1.0"
