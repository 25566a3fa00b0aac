import pytest
import torch

from plugconv_lite import exercises

NAMES = sorted(exercises.EXERCISES)
SOLVED = [n for n in NAMES if exercises.EXERCISES[n].solution is not None]


@pytest.mark.parametrize("name", SOLVED)
def test_from_scratch_solution_passes_the_check_and_hidden_cases(name):
    solution = exercises.EXERCISES[name].solution
    report = exercises.check(name, solution)
    assert report.passed, str(report)
    assert exercises.grade(name, solution, seed=12345)


@pytest.mark.parametrize("name", NAMES)
def test_a_call_into_the_library_is_not_a_solution(name):
    """The references are the library's own behaviour: handing one in as the answer is rejected."""
    report = exercises.check(name, exercises.EXERCISES[name].reference)
    assert not report.passed and report.library_calls, str(report)
    assert "calls the library" in str(report)


@pytest.mark.parametrize("name", SOLVED)
def test_a_wrong_answer_fails_without_revealing_the_expected_value(name):
    ex = exercises.EXERCISES[name]
    cases = ex.cases(torch.Generator().manual_seed(0))
    expected = ex.reference(**cases[0])

    def wrong(*args, **kw):
        out = ex.solution(*args, **kw)
        if isinstance(out, torch.Tensor):
            return out + 0.1
        if isinstance(out, tuple):
            return (out[0] + 1,) + tuple(out[1:])
        return out + 1

    report = exercises.check(name, wrong)
    assert not report.passed and report.failures and "case 0" in report.failures[0]
    if isinstance(expected, (int, float)):
        assert repr(expected) not in report.failures[0]
    hidden = exercises.check(name, wrong, seed=7, hidden=True)
    assert str(hidden).count("\n") == 0 and "case 0" not in str(hidden)  # counts only


def test_stubs_are_not_attempted_and_exceptions_are_reported():
    def todo(**kw):
        raise NotImplementedError

    def ellipsis_body(**kw):
        ...

    def broken(**kw):
        raise KeyError("oops")

    assert exercises.check("stack_cost", todo).not_attempted
    assert exercises.check("stack_cost", ellipsis_body).not_attempted
    assert "not attempted" in str(exercises.check("stack_cost", todo))
    report = exercises.check("stack_cost", broken)
    assert "raised KeyError" in report.failures[0]
    assert "❌" in report._repr_markdown_()


def test_allowed_library_names_pass_the_tracer(monkeypatch):
    from plugconv_lite.receptive import receptive_field

    def answer(layers):
        return receptive_field(layers)[-1][0]

    assert exercises.check("receptive_field", answer).library_calls == ["plugconv_lite.receptive.receptive_field"]
    monkeypatch.setattr(exercises.EXERCISES["receptive_field"], "allow", ("plugconv_lite.receptive.receptive_field",))
    assert exercises.check("receptive_field", answer).passed


def test_shape_mismatch_is_named_and_values_are_not():
    report = exercises.check("spd_unshuffle_weight", lambda weight, s: weight[:, :1])
    assert "shape" in report.failures[0]
    ex = exercises.EXERCISES["spd_unshuffle_weight"]
    assert exercises._compare(torch.zeros(2, 2), torch.ones(2, 2), 1e-5, 1e-4) == \
        "values differ at 4 of 4 entries (first at index (0, 0), where yours is 0)"
    assert ex.name == "spd_unshuffle_weight"


def test_unknown_exercise_lists_valid_names():
    with pytest.raises(ValueError, match="stack_cost"):
        exercises.check("nope", lambda: None)


def test_solution_needs_its_exercise_first():
    with pytest.raises(ValueError, match="registered"):
        exercises.solution("not_an_exercise")(lambda: None)


def test_every_exercise_belongs_to_a_chapter_file():
    from plugconv_lite import chapters
    import pkgutil
    files = {m.name for m in pkgutil.iter_modules(chapters.__path__)}
    for name in NAMES:
        assert exercises.EXERCISES[name].chapter in files, name


def test_a_registered_solution_is_the_answer_not_the_library(monkeypatch):
    """A chapter file's @solution lives inside the package, yet it is checked as an answer: its own calls into the
    library are still rejected."""
    import plugconv_lite.chapters.foundations as foundations
    src = "def receptive_field_of(layers):\n    from plugconv_lite.receptive import receptive_field\n" \
          "    return receptive_field(layers)[-1][0]\n"
    namespace = {}
    exec(compile(src, foundations.__file__, "exec"), namespace)  # as if written in the chapter file
    assert exercises.check("receptive_field", foundations.receptive_field_of).passed
    assert exercises.check("receptive_field", namespace["receptive_field_of"]).library_calls  # not registered
    monkeypatch.setattr(exercises.EXERCISES["receptive_field"], "solution", namespace["receptive_field_of"])
    report = exercises.check("receptive_field", namespace["receptive_field_of"])
    assert report.library_calls == ["plugconv_lite.receptive.receptive_field"], str(report)
