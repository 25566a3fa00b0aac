import numpy as np
import pytest
import torch.nn as nn

from plugconv_lite.receptive import effective_receptive_field, erf_radius, receptive_field, sampling_offsets


def test_receptive_field_arithmetic():
    assert receptive_field([(3, 1), (3, 1)])[-1] == (5, 1)
    assert receptive_field([(3, 2), (3, 1)])[-1] == (7, 2)
    assert receptive_field([(3, 1, 2)])[-1] == (5, 1)
    with pytest.raises(ValueError, match="stride"):
        receptive_field([(3, 0)])


def test_sampling_offsets_span():
    off = sampling_offsets(3, dilation=2)
    assert off.shape == (9, 2) and off.min() == -2 and off.max() == 2


def test_erf_of_a_single_conv_is_its_kernel_support():
    conv = nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False)
    erf = effective_receptive_field(conv, (1, 4, 11, 11), n=2)
    support = np.argwhere(erf > 0)
    assert set(map(tuple, support)) == {(5 + dy, 5 + dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)}


def test_erf_grows_with_depth():
    one = nn.Conv2d(2, 2, 3, padding=1)
    three = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1) for _ in range(3)])
    assert erf_radius(effective_receptive_field(three, (1, 2, 21, 21))) > \
        erf_radius(effective_receptive_field(one, (1, 2, 21, 21)))
