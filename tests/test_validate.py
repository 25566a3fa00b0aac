"""The shared hyperparameter checks (plugconv_lite/_validate.py)."""
import math

import pytest
import torch.nn as nn

from plugconv_lite._validate import check_float, check_layer


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_check_float_rejects_non_finite_values_whatever_the_range(value):
    with pytest.raises(ValueError, match=r"x=(nan|inf|-inf) must be a finite number"):
        check_float("x", value, min_value=1)
    with pytest.raises(ValueError, match="must be a finite number"):
        check_float("x", value)


def test_check_float_accepts_finite_values():
    assert check_float("x", 2, min_value=1) == 2.0 and check_float("x", 0.5, max_value=1) == 0.5


@pytest.mark.parametrize("value", ["relu", None, 3, nn.ReLU()])
def test_check_layer_rejects_names_instances_and_non_callables(value):
    with pytest.raises(ValueError, match="act_layer=.* must be a module class or factory"):
        check_layer("act_layer", value, "nn.ReLU")


def test_check_layer_accepts_classes_and_factories():
    check_layer("act_layer", nn.ReLU, "nn.ReLU")
    check_layer("act_layer", lambda: nn.ReLU(inplace=True), "nn.ReLU")
