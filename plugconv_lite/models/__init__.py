"""CIFAR backbones with plug points (``conv=``, ``attn=``, ``block=``)."""
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .plugs import PlugSite, Plugs
from .resnet import BasicBlock, CifarResNet, resnet18, resnet20, resnet56
from .genet import EnsembleClassifier, EnsembleResNet, ensemble_loss

BACKBONES = {"resnet18": resnet18, "resnet20": resnet20, "resnet56": resnet56, "mobilenetv2": mobilenetv2}


def build(backbone: str, **kw):
    """Build a backbone by name: ``build("resnet18", width=32, attn="se")``."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r} must be one of {sorted(BACKBONES)}")
    return BACKBONES[backbone](**kw)


__all__ = ["BACKBONES", "BasicBlock", "CifarResNet", "EnsembleClassifier", "EnsembleResNet", "MobileNetV2", "PlugSite", "Plugs", "build", "mobilenetv2",
           "ensemble_loss", "resnet18", "resnet20", "resnet56"]
