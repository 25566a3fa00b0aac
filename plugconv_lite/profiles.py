"""One recipe, three budgets: ``smoke`` (CPU / CI), ``colab`` (a T4-class GPU), ``full`` (an A100/H100).

``profile()`` picks ``$PLUGCONV_PROFILE`` if set, else by the hardware found: no GPU -> smoke, a GPU with less than
40 GB -> colab, a larger one -> full (on Colab any GPU -> colab). Every profile runs the same code path; only the
budget changes.

The recipe (all profiles): SGD with Nesterov momentum 0.9, weight decay 5e-4 on weights (not on BN or biases),
linear warm-up then cosine decay to zero, label smoothing 0.1, random crop (4-pixel zero padding) + horizontal flip,
channels_last activations, and mixed precision (bf16 where supported) on a GPU.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import torch


@dataclass(frozen=True)
class Profile:
    name: str
    backbone: str
    width: int                    # base width of the backbone (ResNet-18: 64 is the standard network)
    epochs: int
    batch_size: int
    lr: float                     # peak learning rate
    warmup_epochs: float
    seeds: tuple = (0,)
    train_images: Optional[int] = None   # None: the whole training set; else a class-balanced subset
    test_images: Optional[int] = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    label_smoothing: float = 0.1
    amp: bool = True              # mixed precision on CUDA (bf16 if supported, else fp16 with a grad scaler)
    channels_last: bool = True    # NHWC activations (GPU and CPU)
    compile: bool = False         # torch.compile the model (CUDA only)
    allow_synthetic: bool = False  # fall back to synthetic data when CIFAR-100 is absent (smoke only)
    description: str = field(default="", compare=False)

    def recipe(self) -> dict:
        """Everything that changes what a run computes (used in the config hash of results records)."""
        d = asdict(self)
        for k in ("name", "seeds", "description", "allow_synthetic", "compile"):
            d.pop(k)
        return d

    def with_(self, **changes) -> "Profile":
        return replace(self, **changes)


PROFILES = {
    "smoke": Profile(
        "smoke", "resnet18", width=16, epochs=1, batch_size=100, lr=0.1, warmup_epochs=0.2, seeds=(0,),
        train_images=1000, test_images=500, allow_synthetic=True,
        description="CPU / CI: a narrow ResNet-18 for one epoch on 1,000 images. Proves the code path runs; "
                    "its numbers are not evidence that a module helps."),
    "colab": Profile(
        "colab", "resnet18", width=64, epochs=15, batch_size=256, lr=0.2, warmup_epochs=1, seeds=(0,),
        description="A T4-class GPU: ResNet-18 on full CIFAR-100 for 15 epochs, one seed (pass seeds for more)."),
    "full": Profile(
        "full", "resnet18", width=64, epochs=30, batch_size=512, lr=0.4, warmup_epochs=2, seeds=(0, 1, 2),
        compile=True,
        description="An A100/H100: ResNet-18 on full CIFAR-100 for 30 epochs, three seeds."),
}


def on_colab() -> bool:
    """A Colab kernel (``google.colab`` imported), or a process started from one (Colab sets COLAB_RELEASE_TAG).
    Here rather than in colab.py: a run's code fingerprint covers this file, and must not take in the set-up code."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def detect() -> str:
    """The profile the hardware suggests: smoke without a GPU; on Colab, colab whatever the GPU (its sessions are
    time-limited, and the colab budget is the one the chapters quote); elsewhere colab under 40 GB of GPU memory,
    else full."""
    if not torch.cuda.is_available():
        return "smoke"
    if on_colab():
        return "colab"
    memory = torch.cuda.get_device_properties(0).total_memory
    return "full" if memory >= 40 * 2 ** 30 else "colab"


def profile(name: Optional[str] = None) -> Profile:
    """The named profile, else ``$PLUGCONV_PROFILE``, else the one the hardware suggests."""
    origin = " (from $PLUGCONV_PROFILE)" if not name and os.environ.get("PLUGCONV_PROFILE") else ""
    name = name or os.environ.get("PLUGCONV_PROFILE") or detect()
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        raise ValueError(f"profile={name!r}{origin} must be one of {sorted(PROFILES)}")
    return PROFILES[name]


def banner(p: Profile) -> Optional[str]:
    """The warning printed above smoke-profile numbers (None for the other profiles)."""
    if p.name != "smoke":
        return None
    rule = "=" * 72
    return (f"{rule}\nSMOKE PROFILE: these numbers come from a tiny CPU run. They prove that\n"
            "the code path runs, nothing more; do not read them as a module helping\n"
            "or hurting. Full-profile results, where they exist, come from results/.\n" + rule)
