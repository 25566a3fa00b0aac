import pytest
import torch

from plugconv_lite import exercises


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_reference_passes_its_own_check(name):
    assert exercises.check(name, exercises.EXERCISES[name].reference).passed


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_a_wrong_answer_fails_with_details(name):
    ref = exercises.EXERCISES[name].reference

    def wrong(**kw):
        out = ref(**kw)
        if isinstance(out, torch.Tensor):
            return out + 0.1
        if isinstance(out, tuple):
            return (out[0] + 1,) + tuple(out[1:])
        return out + 1

    report = exercises.check(name, wrong)
    assert not report.passed and report.failures and "case 0" in report.failures[0]


def test_not_implemented_and_exceptions_are_reported():
    def todo(**kw):
        raise NotImplementedError

    def broken(**kw):
        raise KeyError("oops")

    assert exercises.check("se_params", todo).not_implemented
    report = exercises.check("se_params", broken)
    assert "raised KeyError" in report.failures[0]
    assert "❌" in report._repr_markdown_()


def test_shape_mismatch_is_named():
    report = exercises.check("se_forward", lambda x, **kw: x[:, :1])
    assert "shape" in report.failures[0]


def test_unknown_exercise_lists_valid_names():
    with pytest.raises(ValueError, match="se_params"):
        exercises.check("nope", lambda: None)
