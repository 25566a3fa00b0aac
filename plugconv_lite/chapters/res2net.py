"""Res2Net (chapters/07_res2net.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# At width 64 the Res2Net network has 5% fewer parameters than the baseline (FLOPs within 1%). Its equal-budget
# control is the `bottleneck` variant: the same block without the hierarchy (scale 1), whose base_width puts it
# within 2% of the Res2Net network's parameters. That control isolates the hierarchy, which a plain ResNet at a
# matched width would not (it also changes the block type); the chapter computes the ratios.
register_experiment("res2net", [
    BASELINE,
    Variant("res2net", {"block": "res2net", "block_kw": {"scale": 4, "base_width": 40}},
            note="Res2Net blocks, scale 4, base_width 40 (about the baseline's parameters)"),
    Variant("bottleneck", {"block": "res2net", "block_kw": {"scale": 1, "base_width": 76}},
            note="control: the same bottleneck without the hierarchy (scale 1), base_width 76 for about the same "
                 "parameters")])


# Exercise 1: a linearised normal block is one (2s - 1) x (2s - 1) convolution -----------------------------------

def _kernel_cases(g):
    cases = []
    for s, w in [(2, 1), (3, 2), (4, 1), (5, 2), (4, 3), (6, 1)]:
        cases.append(dict(Ks=[torch.randn(w, w, 3, 3, generator=g, dtype=torch.float64) for _ in range(s - 1)]))
    return cases


@exercise("res2net_equivalent_kernel", _kernel_cases,
          "The kernel E (s*w, s*w, 2s-1, 2s-1) of the one convolution that equals a normal Res2Net hierarchy "
          "without BN and ReLU, split convs with kernels Ks = [K_1, ..., K_{s-1}].")
def _res2net_equivalent_kernel(Ks):
    from ..blocks.res2net import Res2NetBlock
    s, w = len(Ks) + 1, Ks[0].shape[0]
    block = Res2NetBlock(s * w, s * w, scale=s, width=w, stype="normal").to(Ks[0].dtype).eval()
    with torch.no_grad():
        for conv, K in zip(block.convs, Ks):
            conv.weight.copy_(K)
    block.conv1, block.bn1, block.relu = nn.Identity(), nn.Identity(), nn.Identity()
    block.bns = nn.ModuleList(nn.Identity() for _ in block.bns)
    k, n = 2 * s - 1, 4 * s + 1  # the impulse response fits in the map: no border effect
    impulses = torch.zeros(s * w, s * w, n, n, dtype=Ks[0].dtype)
    impulses[range(s * w), range(s * w), n // 2, n // 2] = 1.0  # image c: a unit impulse in channel c
    with torch.no_grad():
        response = torch.cat(block.splits(impulses), dim=1)  # (input channel, output channel, n, n)
    lo = n // 2 - k // 2
    return response[:, :, lo:lo + k, lo:lo + k].flip(-1, -2).transpose(0, 1)


@solution("res2net_equivalent_kernel")
def res2net_equivalent_kernel(Ks):
    s, w = len(Ks) + 1, Ks[0].shape[0]
    k = 2 * s - 1
    E = Ks[0].new_zeros(s * w, s * w, k, k)

    def then(A, B):  # the kernel of "convolve with A, then with B" (cross-correlations compose like this)
        return F.conv2d(A.transpose(0, 1), B.flip(-1, -2), padding=B.shape[-1] - 1).transpose(0, 1)

    for j in range(s - 1):  # x_{j+1} passes through K_{j+1}, then K_{j+2}, ... on its way to y_{j+1}, y_{j+2}, ...
        path = Ks[j]
        for i in range(j, s - 1):
            if i > j:
                path = then(path, Ks[i])
            o = (k - path.shape[-1]) // 2  # centred in the k x k frame
            E[i * w:(i + 1) * w, j * w:(j + 1) * w, o:k - o, o:k - o] = path
    E[(s - 1) * w:, (s - 1) * w:, s - 1, s - 1] = torch.eye(w, dtype=E.dtype)  # y_s = x_s
    return E


# Exercise 2: the receptive field of a whole Res2Net ----------------------------------------------------------------

def _rf_cases(g):
    cases = [dict(scale=4, layers=(2, 2, 2, 2)), dict(scale=1, layers=(2, 2, 2, 2))]
    for _ in range(5):
        layers = tuple(draw_int(g, 1, 3) for _ in range(draw_int(g, 3, 4)))
        cases.append(dict(scale=draw_int(g, 1, 6), layers=layers))
    return cases


@exercise("res2net_rf", _rf_cases,
          "The theoretical receptive field of one pixel of the last stage's output of a CIFAR ResNet built from "
          "Res2Net blocks of the given scale, with layers[i] blocks in stage i.")
def _res2net_rf(scale, layers):
    from ..models.resnet import CifarResNet
    net = CifarResNet(list(layers), [2 * 2 ** i for i in range(len(layers))], block="res2net",
                      block_kw={"scale": scale, "width": 1}).eval()
    for module in list(net.modules()):  # linearise: a ReLU could hide a pixel from the gradient
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Identity())
    g = torch.Generator().manual_seed(0)
    n = 63
    while True:  # probe with ever wider inputs until the field no longer reaches the border
        # one row is enough: the kernels are square, so the field's width is its height
        x = torch.randn(1, 3, 1, n, generator=g).requires_grad_(True)
        y = net.features(x)
        y[0, :, 0, y.shape[3] // 2].sum().backward()
        cols = (x.grad[0].abs().sum(dim=(0, 1)) > 0).nonzero().flatten()
        if cols.min() > 0 and cols.max() < n - 1:
            return int(cols.max() - cols.min() + 1)
        n = 2 * n + 1


@solution("res2net_rf")
def res2net_rf(scale, layers):
    rf, jump = 3, 1  # the stem's 3x3 conv
    for stage, blocks in enumerate(layers):
        for block in range(blocks):
            if stage > 0 and block == 0:  # a stage block: every split through one 3x3 conv or pool, stride 2
                rf, jump = rf + 2 * jump, 2 * jump
            else:  # a normal block: the deepest split passes through max(1, s - 1) 3x3 convs
                rf += 2 * jump * max(1, scale - 1)
    return rf
