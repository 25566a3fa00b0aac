"""Attentive Feature Aggregation as a classifier head. Yang, Huang, Sun, Rota Bulo, Kontschieder, Yu: "Dense
Prediction with Attentive Feature Aggregation", WACV 2023, arXiv 2111.00770 (official code: github.com/SysCV/dla-afa,
``afa/model/utils/attn_utils.py`` and the ``AFAIDAUp`` node of ``afa/model/necks/afa_dla_up.py``).

AFA fuses a shallow feature map x (fine, precise "where") with a deeper one f (coarse, semantic "what"): a spatial
attention computed from x and a channel attention computed from f weigh the two,

    out = s * (1 - c) * x + (1 - s) * c * f,

where f was first projected to x's width and upsampled to x's resolution. In the paper it is the aggregation node of
a segmentation decoder; here it fuses the chosen stage outputs of the ResNet once, and a global average pool and a
linear layer turn the fused map into logits (the ``head`` contract, ``models/flow.py``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import (bottleneck_width, check_float, check_int, check_layer, check_norm_layer_2d,
                         make_divisible)
from ..registry import register


def bilinear_upsample_kernel(factor: int) -> torch.Tensor:
    """The (2f, 2f) kernel a stride-f transposed convolution needs to upsample bilinearly (FCN's rule; the official
    ``fill_up_weights``): the outer product of a 1-D triangle."""
    f = factor
    centre = (2 * f - 1 - f % 2) / (2.0 * f)
    t = 1 - (torch.arange(2 * factor, dtype=torch.float64) / f - centre).abs()
    return t[:, None] * t[None, :]


class SpatialAttention(nn.Module):
    """s = sigmoid(W_3 relu(BN(W_2 * relu(BN(W_1 * x))))), shape (B, 1, H, W): two k x k convs C -> h -> h with BN
    and ReLU, then a 1 x 1 conv h -> 1 (no biases), as the official ``SpatialAttentionModule``."""

    def __init__(self, channels: int, hidden: int, kernel_size: int = 3,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        p = (kernel_size - 1) // 2
        self.conv1 = nn.Conv2d(channels, hidden, kernel_size, padding=p, bias=False, **factory)
        self.bn1 = norm_layer(hidden).to(**factory)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size, padding=p, bias=False, **factory)
        self.bn2 = norm_layer(hidden).to(**factory)
        self.conv3 = nn.Conv2d(hidden, 1, 1, bias=False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return torch.sigmoid(self.conv3(h))


class ChannelAttention(nn.Module):
    """c = sigmoid(MLP(GAP(f)) + MLP(GMP(f))), shape (B, C, 1, 1), MLP = 1x1 conv C -> r, BN, ReLU, 1x1 conv r -> C
    (no biases), as the official ``ChannelAttentionModule``. The MLP runs once per descriptor, not on the two
    stacked: in training its BN normalises each descriptor with that descriptor's own batch statistics (and updates
    its running statistics twice per forward), as the official code does. ``norm_layer=None``: no BN, a bias in the
    first conv instead (for batches too small for batch statistics, see the chapter's pitfalls)."""

    def __init__(self, channels: int, hidden: int, norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=norm_layer is None, **factory)
        self.bn = nn.Identity() if norm_layer is None else norm_layer(hidden).to(**factory)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False, **factory)

    def mlp(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(z))))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # max first, as the official code: in training the BN's running statistics then move as there
        m = self.mlp(F.adaptive_max_pool2d(f, 1))
        return torch.sigmoid(m + self.mlp(f.mean(dim=(2, 3), keepdim=True)))


def afa_fuse(x: torch.Tensor, f: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The binary AFA fusion s (1 - c) x + (1 - s) c f. The two weights do not sum to 1 (their sum is
    s + c - 2sc), so the result is not a convex combination of x and f."""
    return s * (1 - c) * x + (1 - s) * c * f


def front_to_back_weights(attn: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The official multi-level rule (``final_feature_fusion``) for attentions a_1..a_L of levels 1..L:
    w_j = a_j * prod_{i > j} (1 - a_i), so each later level's attention leaves only (1 - a_i) of the earlier
    levels' share (a front-to-back transmittance product, as in volume rendering); w_L = a_L. The weights sum to
    1 - prod_i (1 - a_i), not to 1. The official head applies it to the spatial and to the channel attentions
    separately and sums w^s_j w^c_j feat_j. This head fuses its levels with the chained binary node instead (the
    official ``AFAIDAUp``); the function is here for the chapter and its exercise."""
    weights = []
    for j, a in enumerate(attn):
        w = a
        for later in attn[j + 1:]:
            w = w * (1 - later)
        weights.append(w)
    return weights


@register("afa", "head", paper="Dense Prediction with Attentive Feature Aggregation", year=2023, arxiv="2111.00770")
class AFAHead(nn.Module):
    """logits = W GAP(x_K) + b, with x_1 = P_1(X_{l_1}) and, for k = 2..K,

        x_k = s_k (1 - c_k) x_{k-1} + (1 - s_k) c_k f_k,   s_k = SA_k(x_{k-1}),   c_k = CA_k(f_k),
        f_k = U_k(P_k(X_{l_k}))

    X_l is stage l's output (``levels`` = (l_1 < ... < l_K), 1-based; default layer3 and layer4). P_k projects it to
    the common width C (1x1 conv + BN + ReLU; the identity when the stage already has C channels), U_k upsamples it
    by 2^(l_k - l_1) to the shallowest level's resolution with a depthwise transposed convolution (kernel 2u, stride
    u) initialised to bilinear interpolation. With two levels this is one AFA node; with more it is the official
    ``AFAIDAUp`` node with several inputs: each deeper level is fused into the running result in turn, each step with
    its own SA and CA.

    Shapes: X_l (B, C_l, H_l, W_l); x_k, f_k (B, C, H_{l_1}, W_{l_1}); s_k (B, 1, H, W); c_k (B, C, 1, 1).

    ``width`` = C, default the shallowest chosen stage's width (the official rule: that level needs no projection).
    ``sa_reduction``: the SA bottleneck is h = make_divisible(C / sa_reduction, 8); the official code uses h = C
    (``sa_reduction=1``), whose two 3x3 convs cost 18 C^2 parameters (1.18M at C = 256, a tenth of ResNet-18); the
    default 4 costs 2.8 C^2. ``ca_reduction``: the CA hidden width min(C, make_divisible(C / 16, 8)) (official C // 16).
    """

    def __init__(self, channels: Sequence[int], num_classes: int, levels: Sequence[int] = (3, 4),
                 width: Optional[int] = None, sa_reduction: float = 4, sa_hidden: Optional[int] = None,
                 sa_kernel: int = 3, ca_reduction: float = 16, ca_hidden: Optional[int] = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 ca_norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or len(channels) == 0:
            raise ValueError(f"channels={channels!r} must be a non-empty list of stage widths")
        self.channels = [check_int(f"channels[{i}]", c, min_value=1) for i, c in enumerate(channels)]
        self.num_classes = check_int("num_classes", num_classes, min_value=1)
        self.levels = self._check_levels(levels, len(self.channels))
        C = self.channels[self.levels[0] - 1] if width is None else check_int("width", width, min_value=1)
        self.width = C
        self.sa_reduction = check_float("sa_reduction", sa_reduction, min_value=1)
        self.sa_hidden = (make_divisible(C / self.sa_reduction, 8) if sa_hidden is None
                          else check_int("sa_hidden", sa_hidden, min_value=1))
        self.sa_kernel = check_int("sa_kernel", sa_kernel, min_value=1)
        if self.sa_kernel % 2 == 0:
            raise ValueError(f"sa_kernel={sa_kernel} must be odd (the attention map keeps the feature's size)")
        self.ca_reduction = check_float("ca_reduction", ca_reduction, min_value=1)
        self.ca_hidden = bottleneck_width(C, self.ca_reduction, 8, ca_hidden, name="ca_hidden")
        check_norm_layer_2d("norm_layer", norm_layer, C)
        if ca_norm_layer is not None:
            check_norm_layer_2d("ca_norm_layer", ca_norm_layer, self.ca_hidden)
        self.proj = nn.ModuleList()
        self.up = nn.ModuleList()
        for k, level in enumerate(self.levels):
            c_l = self.channels[level - 1]
            self.proj.append(nn.Identity() if c_l == C else nn.Sequential(
                nn.Conv2d(c_l, C, 1, bias=False, **factory), norm_layer(C).to(**factory), nn.ReLU(inplace=True)))
            u = 2 ** (level - self.levels[0])
            self.up.append(nn.Identity() if u == 1 else nn.ConvTranspose2d(
                C, C, 2 * u, stride=u, padding=u // 2, groups=C, bias=False, **factory))
        self.sa = nn.ModuleList(SpatialAttention(C, self.sa_hidden, self.sa_kernel, norm_layer, **factory)
                                for _ in self.levels[1:])
        self.ca = nn.ModuleList(ChannelAttention(C, self.ca_hidden, ca_norm_layer, **factory)
                                for _ in self.levels[1:])
        self.fc = nn.Linear(C, num_classes, **factory)
        self.reset_parameters()

    @staticmethod
    def _check_levels(levels, n: int) -> tuple[int, ...]:
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
            raise ValueError(f"levels={levels!r} must be a sequence of stage numbers (1 = the first stage)")
        levels = tuple(levels)
        if len(levels) < 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in levels) or \
                any(not 1 <= v <= n for v in levels) or list(levels) != sorted(set(levels)):
            raise ValueError(f"levels={levels!r} must be at least two increasing stage numbers in 1..{n}")
        return levels

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections as the official ``init_weights`` (Kaiming-normal fan-out, BN at (1, 0)); the transposed convs
        at bilinear upsampling; SA and CA convs as the official ``initialize_weights`` (Kaiming-normal fan-in) but
        their BNs at (1, 0) (the official code draws the BN scales from U(0, 1)); the classifier nn.Linear's
        default, as the backbone's own."""
        projections = {id(m) for m in self.proj.modules()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                mode = "fan_out" if id(m) in projections else "fan_in"
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d):
                m.weight.copy_(bilinear_upsample_kernel(m.stride[0]).to(m.weight).expand_as(m.weight))
            elif isinstance(m, nn.modules.batchnorm._NormBase):
                m.reset_parameters()
        self.fc.reset_parameters()

    def features(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fused map x_K, (B, C, H_{l_1}, W_{l_1})."""
        if len(stages) != len(self.channels):
            raise ValueError(f"stages: got {len(stages)} stage outputs, the head was built for {len(self.channels)}")
        X = [stages[level - 1] for level in self.levels]
        x = self.proj[0](X[0])
        H, W = x.shape[-2:]
        for k in range(1, len(X)):
            # project, then upsample (the official order); an odd shallow size makes the upsampled map one larger
            f = self.up[k](self.proj[k](X[k]))[..., :H, :W]
            x = afa_fuse(x, f, self.sa[k - 1](x), self.ca[k - 1](f))
        return x

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc(self.features(stages).mean(dim=(2, 3)))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_classes={self.num_classes}, levels={self.levels}, width={self.width}, "
                f"sa_hidden={self.sa_hidden}, ca_hidden={self.ca_hidden}")
