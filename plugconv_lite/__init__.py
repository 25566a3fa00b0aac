"""plugconv_lite: plug-and-play CNN modules and the CIFAR-100 testbed of the plugconv-lite book.

    import plugconv_lite as pl
    model = pl.resnet18(attn="se")                     # plug a registered module into a CIFAR backbone
    model, names = pl.swap_convs(other_model, "conv2d")  # or into a network we did not write
    pl.measure(model)                                  # params, FLOPs, latency, peak memory
    pl.run_chapter("se")                               # the SE chapter's experiment on the active profile
"""
from . import attention, blocks, conv, heads  # noqa: F401  (importing registers the modules)
from . import results
from .data import Dataset, load_cifar100, synthetic_cifar100
from .experiments import Variant, experiment, run_chapter
from .measure import compare, count_flops, count_params, latency_statement, measure, summary
from .models import build as build_model, mobilenetv2, resnet18, resnet20, resnet56
from .models.plugs import PlugSite
from .profiles import profile
from .registry import available, create, get, register, set_progress
from .surgery import add_attention, fold, fuse_bn, swap_convs
from .train import train

__version__ = "0.1.0"


def __getattr__(name):  # the plotting / widget / exercise modules import matplotlib and ipywidgets: load on use
    if name in ("viz", "widgets", "exercises", "receptive"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    if name == "explore":
        from .widgets import explore
        return explore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Dataset", "PlugSite", "Variant", "add_attention", "available", "build_model", "compare", "count_flops",
           "count_params", "create", "experiment", "explore", "latency_statement", "fold", "fuse_bn", "get", "load_cifar100", "measure",
           "mobilenetv2", "profile", "register", "resnet18", "resnet20", "resnet56", "results", "run_chapter",
           "set_progress", "summary", "swap_convs", "synthetic_cifar100", "train"]
