"""GENet's group ensemble as a model option of resnet18 (models/genet.py): the defining properties."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.models import EnsembleClassifier, EnsembleResNet, ensemble_loss
from plugconv_lite.models.genet import RESNET_WIDEN, grouped_width


def _net(members=4, width=8, **kw):
    torch.manual_seed(0)
    return pl.resnet18(num_classes=10, width=width, ensemble=members, **kw).double().eval()


@pytest.mark.parametrize("ensemble_from", [1, 3, 4])
def test_members_are_independent_until_the_averaging(ensemble_from):
    """The Jacobian of member h's logits w.r.t. the input of the first grouped stage is zero on every channel group
    but h's: perturbing member g's channels changes only member g's logits."""
    members = 4
    net = _net(members, ensemble_from=ensemble_from)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    feats = net.stem(x)
    for i in range(ensemble_from - 1):
        feats = getattr(net, f"layer{i + 1}")(feats)
    feats = feats.detach().requires_grad_(True)

    def members_from(f):
        for i in range(ensemble_from - 1, 4):
            f = getattr(net, f"layer{i + 1}")(f)
        return net.fc.members(torch.flatten(net.pool(f), 1))

    z = members_from(feats)
    c = feats.shape[1] // members
    for h in range(members):
        (grad,) = torch.autograd.grad(z[:, h].sum(), feats, retain_graph=True)
        per_group = grad.abs().reshape(2, members, c, *grad.shape[2:]).sum(dim=(0, 2, 3, 4))
        assert per_group[h] > 0
        assert torch.count_nonzero(per_group) == 1, (h, per_group)
    # and a finite perturbation of member 1's channels moves member 1's logits only
    bumped = feats.detach().clone()
    bumped[:, c:2 * c] += torch.randn_like(bumped[:, c:2 * c])
    dz = (members_from(bumped) - z).detach().abs().amax(dim=(0, 2))
    assert dz[1] > 1e-6 and torch.equal(dz[[0, 2, 3]], torch.zeros(3, dtype=torch.float64))


def test_every_conv_of_the_grouped_stages_is_grouped_and_the_shared_ones_are_not():
    net = _net(2, ensemble_from=3)
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and not name.startswith("fc"):
            expected = 2 if name.startswith(("layer3", "layer4")) else 1
            assert m.groups == expected, name
    assert net.fc.fc.groups == 2


def test_grouped_classifier_equals_separate_linear_heads():
    torch.manual_seed(0)
    head = EnsembleClassifier(12, 5, members=3).double()
    x = torch.randn(4, 12, dtype=torch.float64)
    w = head.fc.weight.reshape(3, 5, 4)
    b = head.fc.bias.reshape(3, 5)
    expected = torch.stack([F.linear(x[:, 4 * g:4 * g + 4], w[g], b[g]) for g in range(3)], dim=1)
    assert torch.allclose(head.members(x), expected, atol=1e-12)


def test_ensemble_output_is_the_mean_of_member_logits():
    net = _net(4)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    z = net.member_logits(x)
    assert z.shape == (3, 4, 10)
    assert torch.allclose(net(x), z.mean(dim=1), atol=1e-12)
    logits, named = net.head_logits(x)
    assert torch.allclose(logits, z.mean(dim=1), atol=1e-12)
    assert list(named) == ["member1", "member2", "member3", "member4"]
    assert torch.equal(named["member3"], z[:, 2])


def test_average_loss_is_the_mean_of_member_cross_entropies():
    net = _net(4).train()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    loss, logits = net.training_loss(x, y, nn.CrossEntropyLoss())
    z = net.member_logits(x)
    expected = sum(F.cross_entropy(z[:, g], y) for g in range(4)) / 4
    assert torch.allclose(loss, expected, atol=1e-10)
    assert torch.allclose(logits, z.mean(dim=1), atol=1e-10)
    # not the cross-entropy of the averaged logits (a different objective)
    assert not torch.allclose(loss, F.cross_entropy(z.mean(dim=1), y), atol=1e-6)


@pytest.mark.parametrize("criterion", [nn.CrossEntropyLoss(label_smoothing=0.1),
                                       nn.CrossEntropyLoss(weight=torch.rand(7, dtype=torch.float64) + 0.5)])
def test_average_loss_is_the_mean_of_member_losses_for_any_averaging_criterion(criterion):
    """The one-call form (B*G rows) equals mean_g criterion(z_g, y), also with label smoothing and class weights."""
    torch.manual_seed(0)
    z, y = torch.randn(6, 3, 7, dtype=torch.float64), torch.randint(0, 7, (6,))
    expected = sum(criterion(z[:, g], y) for g in range(3)) / 3
    assert torch.allclose(ensemble_loss(z, y, criterion, "average"), expected, atol=1e-12)


def test_wagging_weights_are_random_convex_weights_per_call():
    torch.manual_seed(0)
    z, y = torch.randn(5, 3, 7, dtype=torch.float64), torch.randint(0, 7, (5,))
    ce = torch.stack([F.cross_entropy(z[:, g], y) for g in range(3)])
    gen = torch.Generator().manual_seed(1)
    a = ensemble_loss(z, y, nn.CrossEntropyLoss(), "wagging", generator=gen)
    b = ensemble_loss(z, y, nn.CrossEntropyLoss(), "wagging", generator=gen)
    assert a != b                                      # new weights every iteration
    assert ce.min() - 1e-12 <= a <= ce.max() + 1e-12   # a convex combination of the member losses
    w = torch.empty(3).exponential_(generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, (ce * w / w.sum()).sum(), atol=1e-12)


def test_boosting_trains_member_g_on_the_running_sum_with_earlier_members_frozen():
    torch.manual_seed(0)
    z = torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (5,))
    loss = ensemble_loss(z, y, nn.CrossEntropyLoss(), "boosting")
    running = [z[:, 0], z[:, 0] + z[:, 1], z[:, 0] + z[:, 1] + z[:, 2]]
    assert torch.allclose(loss, sum(F.cross_entropy(r, y) for r in running) / 3, atol=1e-12)
    # each member's gradient comes from its own term only: the members before it are under stopgrad
    (grad,) = torch.autograd.grad(loss, z)
    zs, onehot = z.detach(), F.one_hot(y, 7)
    for g in range(3):
        own = torch.softmax(zs[:, :g + 1].sum(dim=1), dim=1) - onehot
        assert torch.allclose(grad[:, g], own / 5 / 3, atol=1e-12), g


def test_ensemble_1_is_the_plain_network():
    """Same state_dict keys and shapes, same weights and outputs for the same seed."""
    torch.manual_seed(0)
    plain = pl.resnet18(num_classes=10, width=8)
    torch.manual_seed(0)
    option = pl.resnet18(num_classes=10, width=8, ensemble=1)
    assert type(option) is type(plain) and not hasattr(option, "training_loss")
    a, b = plain.state_dict(), option.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(plain.eval()(x), option.eval()(x))


def test_grouped_stages_are_widened_by_the_factor_to_a_multiple_of_the_members():
    net = pl.resnet18(width=64, ensemble=4)
    assert net.ensemble_widen == RESNET_WIDEN[4] == 1.85
    assert net.layer4[0].conv1.out_channels == grouped_width(512, 4, 1.85) == 948
    assert net.layer3[0].conv1.out_channels == 256
    assert pl.resnet18(width=64, ensemble=2, ensemble_widen=1.0).layer4[0].conv1.out_channels == 512


def test_the_stem_is_shared_and_never_widened():
    """With ensemble_from=1 layer1 is widened, the stem is not: layer1's first block reads the stem's width and
    projects it (the widening happens in the grouped stage's first block, as in every later stage)."""
    net = pl.resnet18(num_classes=10, width=16, ensemble=2, ensemble_from=1, ensemble_widen=1.35)
    assert net.stem[0].out_channels == 16 and net.stem[0].groups == 1
    block = net.layer1[0]
    assert block.conv1.in_channels == 16 and block.conv1.out_channels == 22 and block.conv1.groups == 2
    assert block.shortcut[0].in_channels == 16 and block.shortcut[0].groups == 2


def test_grouped_stage_parameter_count_formula():
    """layer4 (input C_in, width C, G members) has 1/G of a dense stage's conv weights; the grouped classifier has
    C * K weights, as one dense classifier, and G * K biases."""
    g, c_in, c, k = 4, 32, 64, 10
    net = pl.resnet18(num_classes=k, width=8, ensemble=g, ensemble_widen=1.0)   # layer4: 32 -> 64 channels
    conv = (c_in * c * 9 + 3 * c * c * 9 + c_in * c) // g   # conv1, conv2, shortcut of block 0; block 1's two convs
    bn = 5 * 2 * c
    assert pl.count_params(net.layer4) == conv + bn
    assert pl.count_params(net.fc) == c * k + g * k


@pytest.mark.parametrize("kw,param", [
    (dict(ensemble=3), "ensemble=3"),                      # layer3's width 32 is not divisible by 3
    (dict(ensemble=0), "ensemble=0"),
    (dict(ensemble=2, ensemble_from=5), "ensemble_from=5"),
    (dict(ensemble=2, ensemble_from=0), "ensemble_from=0"),
    (dict(ensemble=5), "ensemble_widen=None"),             # no default widening for 5 members
    (dict(ensemble=2, ensemble_widen=0.0), "ensemble_widen=0.0"),
    (dict(ensemble=2, ensemble_loss="vote"), "ensemble_loss='vote'"),
    (dict(ensemble=2, attn="se"), "attn='se'"),
    (dict(ensemble=2, attn_connect=True), "attn_connect=True"),
    (dict(ensemble=2, stage_attn="sda"), "stage_attn='sda'"),
    (dict(ensemble=2, head="fpt"), "head='fpt'"),
    (dict(ensemble=1, ensemble_from=3), "ensemble_from=3"),
    (dict(ensemble=1, ensemble_widen=1.5), "ensemble_widen=1.5"),
])
def test_bad_ensemble_options_raise_value_error_naming_the_parameter(kw, param):
    with pytest.raises(ValueError, match="^" + param.replace("(", r"\(")):
        pl.resnet18(num_classes=10, width=8, **kw)


def test_ensemble_is_an_ensemble_resnet_with_its_options_in_repr():
    net = pl.resnet18(num_classes=10, width=8, ensemble=2, ensemble_from=3, ensemble_loss="boosting")
    assert isinstance(net, EnsembleResNet)
    assert "ensemble=2, ensemble_from=layer3" in repr(net) and "boosting" in repr(net)
