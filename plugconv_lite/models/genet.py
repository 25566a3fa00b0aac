"""GENet: group ensemble. Chen, Shrivastava: "Group Ensemble: Learning an Ensemble of ConvNets in a single ConvNet",
arXiv 2007.00649 (2020).

One network holds G ensemble members. The stem and the early stages are shared; from stage ``ensemble_from`` on
every conv (3x3 and the 1x1 shortcut) is a grouped conv with G groups, so channel group g of every later layer sees
only channel group g of the layer before: G independent sub-networks ("members") realised in one tensor. BN is per
channel, so it never mixes members. The classifier is a grouped 1x1 conv C -> G*K (groups = G) on the pooled
features, giving member logits z in R^{B x G x K}; the network's output is their mean (group averaging):

    z_g = W_g pool(x_g) + b_g,    y_hat = (1/G) sum_g z_g

A grouped conv at width C has C^2 / G weights instead of C^2, so the grouped stages are widened by a factor to keep
the cost about constant; the authors' follow-up code (haochen-rye/ModEnsNet, the only released code that implements
the group ensemble) uses {2: 1.35, 3: 1.65, 4: 1.85} for ResNets, the default here (``RESNET_WIDEN``).

Training objectives (``ensemble_loss``), all over the member logits:

* ``"average"`` (group averaging; the form the follow-up code implements): L = (1/G) sum_g CE(z_g, y);
* ``"wagging"`` (group wagging; a reconstruction from the paper's text, no code was released): L = sum_g w_g
  CE(z_g, y) with random weights w ~ Dirichlet(1, ..., 1) drawn afresh every iteration (wagging = training members on
  randomly re-weighted objectives);
* ``"boosting"`` (group boosting; a reconstruction from the paper's text): member g is trained on the running sum
  z~_g = z_g + stopgrad(z~_{g-1}) (z~_1 = z_1), L = (1/G) sum_g CE(z~_g, y), so each member fits what the ones before
  it left; the follow-up code reports these running sums as the cumulative ensembles.

The prediction is the mean of the member logits in every mode. The trainer sees the member logits through the
model's ``training_loss`` hook and records each member's accuracy through ``head_logits`` (``registry``'s docstring).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .._validate import check_choice, check_divides, check_float, check_int
from .resnet import CifarResNet

# the authors' follow-up code's widening factors for ResNets (members -> width factor of the grouped stages)
RESNET_WIDEN = {2: 1.35, 3: 1.65, 4: 1.85}
ENSEMBLE_LOSSES = ("average", "wagging", "boosting")


def grouped_width(width: int, members: int, widen: float) -> int:
    """The width of a grouped stage: ``width * widen`` rounded to a multiple of ``members`` (at least one channel per
    member)."""
    return members * max(1, round(width * widen / members))


class EnsembleClassifier(nn.Module):
    """G linear heads on G disjoint channel groups, as one grouped 1x1 conv: (B, C) -> member logits (B, G, K).

    ``forward`` returns the ensemble, the mean of the member logits (B, K); ``members`` returns them all."""

    def __init__(self, in_features: int, num_classes: int, members: int, device=None, dtype=None):
        super().__init__()
        self.members_ = check_int("members", members, min_value=1)
        check_divides("members", members, "in_features", check_int("in_features", in_features, min_value=1))
        self.num_classes = check_int("num_classes", num_classes, min_value=1)
        self.fc = nn.Conv2d(in_features, members * num_classes, 1, groups=members, bias=True, device=device,
                            dtype=dtype)

    def members(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.reshape(x.shape[0], -1, 1, 1))
        return z.reshape(x.shape[0], self.members_, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.members(x).mean(dim=1)

    def extra_repr(self) -> str:
        return f"members={self.members_}, num_classes={self.num_classes}"


def ensemble_loss(z: torch.Tensor, target: torch.Tensor, criterion, mode: str = "average",
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The training objective over member logits ``z`` (B, G, K) (see the module docstring for the three modes).

    ``criterion(logits, target)`` is the per-member loss (the trainer's cross-entropy); ``generator`` draws the
    wagging weights (the global RNG by default, which the trainer seeds)."""
    check_choice("ensemble_loss", mode, ENSEMBLE_LOSSES)
    if z.dim() != 3:
        raise ValueError(f"z of shape {tuple(z.shape)} must be member logits (B, G, K)")
    members = z.shape[1]
    if mode == "average":   # one call over the B*G rows: mean_g (mean_b CE) when the criterion averages (the same
        # targets in every member, so a class-weighted mean is the mean of the members' weighted means too)
        return criterion(z.reshape(-1, z.shape[2]), target.repeat_interleave(members))
    if mode == "boosting":
        running, losses = None, []
        for g in range(members):
            running = z[:, g] if running is None else z[:, g] + running.detach()
            losses.append(criterion(running, target))
        return torch.stack(losses).mean()
    losses = torch.stack([criterion(z[:, g], target) for g in range(members)])
    w = torch.empty(members, device="cpu").exponential_(generator=generator)   # Exp(1) / sum = Dirichlet(1,...,1)
    return (losses * (w / w.sum()).to(losses.device, losses.dtype)).sum()


class EnsembleResNet(CifarResNet):
    """A CIFAR ResNet whose stages from ``ensemble_from`` (1-based, default the last) on are a group ensemble of
    ``ensemble`` members, widened by ``ensemble_widen`` (default ``RESNET_WIDEN[ensemble]``).

    ``forward`` returns the ensemble logits (B, K); ``member_logits`` the members' (B, G, K). The first grouped stage
    splits the shared features among the members (a grouped conv on the shared input): member g sees the g-th
    1/G of the shared channels, so the shared width must be divisible by G. Attention and block plugs are refused:
    an attention module mixes the channels of all members (no longer an ensemble), a plugged block has no groups;
    for the same reasons the Flow options (``attn_connect``, ``stage_attn``, ``head``) are refused too."""

    def __init__(self, layers: Sequence[int], widths: Sequence[int], num_classes: int = 100, *, ensemble: int,
                 ensemble_from: Optional[int] = None, ensemble_widen: Optional[float] = None,
                 ensemble_loss: str = "average", attn=None, block=None, **kw):
        members = check_int("ensemble", ensemble, min_value=2)
        n = len(layers)
        start = n if ensemble_from is None else check_int("ensemble_from", ensemble_from, min_value=1, max_value=n)
        if ensemble_widen is None:
            if members not in RESNET_WIDEN:
                raise ValueError(f"ensemble_widen=None has no default for ensemble={members} (defaults exist for "
                                 f"{sorted(RESNET_WIDEN)}); give the widening factor explicitly")
            ensemble_widen = RESNET_WIDEN[members]
        widen = check_float("ensemble_widen", ensemble_widen, min_value=0.0, min_inclusive=False)
        check_choice("ensemble_loss", ensemble_loss, ENSEMBLE_LOSSES)
        why = {"attn": "attention mixes the channels of all members", "block": "a plugged block has no conv groups",
               "attn_connect": "it connects attention modules, which mix the channels of all members",
               "stage_attn": "a stage attention weighs the blocks with a descriptor of all members' channels",
               "head": "the ensemble's classifier is its grouped head"}
        for name, value in (("attn", attn), ("block", block), ("attn_connect", kw.get("attn_connect")),
                            ("stage_attn", kw.get("stage_attn")), ("head", kw.get("head"))):
            if value is not None and value is not False:
                raise ValueError(f"{name}={value!r} cannot be combined with ensemble={members}: {why[name]}")
        # the shared features entering the first grouped stage are split among the members
        check_divides("ensemble", members, f"layer{start - 1} width" if start > 1 else "stem width",
                      widths[start - 2] if start > 1 else widths[0])
        stem_width = widths[0]
        widths = [w if i < start - 1 else grouped_width(w, members, widen) for i, w in enumerate(widths)]
        super().__init__(layers, widths, num_classes, stage_groups=[1 if i < start - 1 else members for i in range(n)],
                         stem_width=stem_width, **kw)
        self.fc = EnsembleClassifier(widths[-1], num_classes, members)
        self.ensemble, self.ensemble_from, self.ensemble_widen = members, start, widen
        self.ensemble_loss = ensemble_loss

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The members' logits (B, G, K); their mean over G is ``forward(x)``."""
        return self.fc.members(torch.flatten(self.pool(self.features(x)), 1))

    def training_loss(self, x: torch.Tensor, target: torch.Tensor, criterion) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainer's hook (``registry``): (the ``ensemble_loss`` objective over the members, ensemble logits)."""
        z = self.member_logits(x)
        return ensemble_loss(z, target, criterion, self.ensemble_loss), z.mean(dim=1)

    def head_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The evaluation hook (``registry``): (ensemble logits, {"member1": z_1, ..., "memberG": z_G})."""
        z = self.member_logits(x)
        return z.mean(dim=1), {f"member{g + 1}": z[:, g] for g in range(self.ensemble)}

    def extra_repr(self) -> str:
        return (f"ensemble={self.ensemble}, ensemble_from=layer{self.ensemble_from}, "
                f"ensemble_widen={self.ensemble_widen}, ensemble_loss={self.ensemble_loss!r}")
