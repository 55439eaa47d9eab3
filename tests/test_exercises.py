"""Tests of mmcourse.exercises: compare, check_value, CheckResult, report."""
import numpy as np
import pytest
import torch

from mmcourse.exercises import CheckResult, ExerciseFailed, check_value, compare, report


def make_matrix(gen):
    return (torch.randn(4, 3, generator=gen),)


def make_matrix_with_grad(gen):
    return (torch.randn(4, 3, generator=gen, requires_grad=True),)


def reference_softmax(x):
    return torch.softmax(x, dim=-1)


class WrongBackwardSoftmax(torch.autograd.Function):
    """Softmax with the right forward and a zero backward (a plain sum of outputs would not notice)."""

    @staticmethod
    def forward(ctx, x):
        return torch.softmax(x, dim=-1)

    @staticmethod
    def backward(ctx, grad_output):
        return torch.zeros_like(grad_output)


class ScaledBackwardDouble(torch.autograd.Function):
    """2 * x forward, 3 * grad backward."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad_output):
        return 3 * grad_output


# ----------------------------------------------------------------------------------------- verdicts


def test_identical_functions_pass():
    result = compare(reference_softmax, reference_softmax, make_matrix, check_grad=False)
    assert result.passed and bool(result)
    assert result.hint is None
    assert "5 random inputs" in result.message


def test_an_equivalent_implementation_passes_values_and_gradients():
    def learner(x):
        e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
        return e / e.sum(dim=-1, keepdim=True)

    result = compare(learner, reference_softmax, make_matrix_with_grad, check_grad=True)
    assert result.passed, result.message
    assert "gradients" in result.message


def test_wrong_shape():
    result = compare(lambda x: torch.softmax(x, -1)[:, :2], reference_softmax, make_matrix, name="softmax")
    assert not result.passed and not bool(result)
    assert result.message == "softmax: shape (4, 2), expected (4, 3)."
    assert result.hint


def test_wrong_values_names_index_and_max_diff():
    def learner(x):
        out = torch.softmax(x, -1).clone()
        out[2, 1] += 0.5
        return out

    result = compare(learner, reference_softmax, make_matrix, name="softmax")
    assert not result.passed
    assert result.message.startswith("softmax: values differ at index (2, 1): ")
    assert "max abs diff 0.5)" in result.message


def test_values_within_tolerance_pass_and_outside_fail():
    nudged = lambda x: torch.softmax(x, -1) + 1e-3  # noqa: E731
    assert compare(nudged, reference_softmax, make_matrix, atol=1e-2).passed
    assert not compare(nudged, reference_softmax, make_matrix, atol=1e-5).passed


def test_wrong_dtype():
    result = compare(lambda x: torch.softmax(x, -1).double(), reference_softmax, make_matrix, name="f")
    assert result.message == "f: dtype torch.float64, expected torch.float32."


def test_wrong_type():
    result = compare(lambda x: torch.softmax(x, -1).tolist(), reference_softmax, make_matrix, name="f")
    assert result.message == "f: got a list, expected a torch.Tensor."


def test_missing_return():
    def learner(x):
        torch.softmax(x, -1)

    result = compare(learner, reference_softmax, make_matrix)
    assert result.message == "learner: got None (is a `return` missing?), expected a torch.Tensor."


def test_numpy_outputs_and_numpy_generator():
    reference = lambda a: np.cumsum(a, axis=0)  # noqa: E731
    make = lambda rng: (rng.standard_normal((5, 2)),)  # noqa: E731
    assert compare(lambda a: a.cumsum(0), reference, make, generator="numpy").passed
    wrong = compare(lambda a: a.cumsum(1), reference, make, generator="numpy", name="cumsum")
    assert wrong.message.startswith("cumsum: values differ at index (")


def test_nested_outputs_locate_the_difference():
    reference = lambda x: (x.sum(), {"mean": x.mean(), "n": x.numel()})  # noqa: E731
    assert compare(lambda x: (x.sum(), {"mean": x.mean(), "n": x.numel()}), reference, make_matrix).passed
    wrong_item = compare(lambda x: (x.sum(), {"mean": x.mean() + 1, "n": x.numel()}), reference, make_matrix,
                         name="f")
    assert wrong_item.message.startswith("f: output[1]['mean']: values differ")
    missing = compare(lambda x: (x.sum(), {"mean": x.mean()}), reference, make_matrix, name="f")
    assert missing.message == "f: output[1]: missing key 'n'."
    short = compare(lambda x: (x.sum(),), reference, make_matrix, name="f")
    assert short.message == "f: got 1 items, expected 2."
    as_list = compare(lambda x: [x.sum(), {}], reference, make_matrix, name="f")
    assert as_list.message == "f: got a list, expected a tuple."


def test_python_numbers():
    make = lambda gen: (torch.randn(3, generator=gen),)  # noqa: E731
    reference = lambda x: float(x.sum())  # noqa: E731
    assert compare(lambda x: x.sum().item(), reference, make).passed
    forgot_item = compare(lambda x: x.sum(), reference, make, name="f")
    assert forgot_item.message == "f: got a torch.Tensor, expected a float."
    count = compare(lambda x: x.numel() + 1, lambda x: x.numel(), make, name="count")
    assert count.message == "count: value 4, expected 3."
    as_float = compare(lambda x: float(x.numel()), lambda x: x.numel(), make, name="count")
    assert as_float.message == "count: got a float, expected an int."


# ---------------------------------------------------------------------------------------- gradients


def test_wrong_backward_is_caught_although_values_match():
    result = compare(ScaledBackwardDouble.apply, lambda x: 2 * x, make_matrix_with_grad, check_grad=True,
                     name="double")
    assert not result.passed
    assert result.message.startswith("double: gradient w.r.t. argument 'x' differs at index (")
    assert compare(ScaledBackwardDouble.apply, lambda x: 2 * x, make_matrix_with_grad).passed  # values only


def test_wrong_backward_invisible_to_a_plain_sum_is_caught():
    # The rows of softmax's Jacobian sum to zero, so d(sum of outputs)/dx is 0 for both functions.
    result = compare(WrongBackwardSoftmax.apply, reference_softmax, make_matrix_with_grad, check_grad=True)
    assert not result.passed
    assert "gradient w.r.t. argument 'x' differs" in result.message


def test_detached_output_is_caught():
    result = compare(lambda x: torch.softmax(x.detach(), -1), reference_softmax, make_matrix_with_grad,
                     check_grad=True, name="f")
    assert not result.passed
    assert "detached" in result.message
    assert "detach" in result.hint


def test_gradient_names_the_argument_that_differs():
    def reference(a, b):
        return a * b

    def learner(a, b):
        return a * ScaledBackwardDouble.apply(b) / 2

    make = lambda gen: (torch.randn(3, generator=gen, requires_grad=True),  # noqa: E731
                        torch.randn(3, generator=gen, requires_grad=True))
    result = compare(learner, reference, make, check_grad=True)
    assert "gradient w.r.t. argument 'b' differs" in result.message


def test_check_grad_without_grad_inputs_is_an_authoring_error():
    with pytest.raises(ValueError, match="requires grad"):
        compare(reference_softmax, reference_softmax, make_matrix, check_grad=True)


# ------------------------------------------------------------------------------- learners that break


def test_not_implemented_verdict():
    def learner(x):
        raise NotImplementedError

    result = compare(learner, reference_softmax, make_matrix)
    assert not result.passed
    assert result.message == "learner is not implemented yet."
    assert "### BEGIN SOLUTION" in result.hint


def test_exception_verdict_is_one_sentence_without_traceback():
    def learner(x):
        return x @ x  # (4, 3) @ (4, 3) cannot multiply

    result = compare(learner, reference_softmax, make_matrix)
    assert not result.passed
    assert result.message.startswith("learner raised RuntimeError: ")
    assert "\n" not in result.message and "Traceback" not in repr(result)
    assert result.hint


def test_exception_in_learner_backward_is_a_verdict():
    class BrokenBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.softmax(x, -1)

        @staticmethod
        def backward(ctx, grad_output):
            raise ValueError("oops\nsecond line")

    result = compare(BrokenBackward.apply, reference_softmax, make_matrix_with_grad, check_grad=True, name="f")
    assert result.message == "f raised ValueError: oops."


def test_passing_a_value_instead_of_a_function():
    result = compare(reference_softmax(torch.ones(2)), reference_softmax, make_matrix, name="softmax")
    assert result.message == "softmax: expected a function, got a torch.Tensor."
    assert "without calling it" in result.hint


def test_input_mutation_cannot_reach_the_reference_or_the_caller():
    shared_weight = torch.ones(3)

    def make(gen):
        return (torch.randn(4, 3, generator=gen), shared_weight)

    def reference(x, w):
        return x * w

    def mutating_learner(x, w):
        out = x * w
        x.zero_()
        w.add_(1.0)  # without copies the next trial's reference would see w = 2, 3, ...
        return out

    result = compare(mutating_learner, reference, make, trials=3)
    assert result.passed, result.message
    assert torch.equal(shared_weight, torch.ones(3))


def test_trials_are_deterministic_and_global_rng_untouched():
    seen = []

    def make(gen):
        x = torch.randn(2, generator=gen)
        seen.append(x)
        return (x,)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    compare(torch.neg, torch.neg, make, trials=2, seed=7)
    compare(torch.neg, torch.neg, make, trials=2, seed=7)
    compare(torch.neg, torch.neg, make, trials=1, seed=8)
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[4])
    assert torch.equal(torch.get_rng_state(), before)


def test_learner_and_reference_see_the_same_global_rng():
    def noisy(x):
        return x + torch.rand(x.shape)

    assert compare(noisy, noisy, make_matrix).passed


def test_kwargs_inputs():
    make = lambda gen: {"x": torch.randn(2, 3, generator=gen), "dim": 0}  # noqa: E731
    assert compare(lambda x, dim: x.sum(dim), lambda x, dim: x.sum(dim), make).passed
    assert not compare(lambda x, dim: x.sum(1), lambda x, dim: x.sum(dim), make).passed


def test_raise_on_fail():
    with pytest.raises(ExerciseFailed, match=r"^f: shape \(4, 2\), expected \(4, 3\)\.$") as caught:
        compare(lambda x: x[:, :2], reference_softmax, make_matrix, name="f", raise_on_fail=True)
    assert isinstance(caught.value, AssertionError)
    assert compare(reference_softmax, reference_softmax, make_matrix, raise_on_fail=True).passed


def test_custom_hint_replaces_the_default():
    result = compare(lambda x: x, reference_softmax, make_matrix, hint="Normalise each row.")
    assert result.hint == "Normalise each row."

    def learner(x):
        raise NotImplementedError

    assert "### BEGIN SOLUTION" in compare(learner, reference_softmax, make_matrix, hint="Normalise each row.").hint


@pytest.mark.parametrize("kwargs, error, match", [
    ({"trials": 0}, ValueError, "trials"),
    ({"trials": 1.5}, TypeError, "trials"),
    ({"seed": -1}, ValueError, "seed"),
    ({"atol": -1.0}, ValueError, "atol"),
    ({"rtol": float("nan")}, ValueError, "rtol"),
    ({"generator": "jax"}, ValueError, "generator"),
    ({"reference_fn": 3}, TypeError, "reference_fn"),
    ({"make_inputs": lambda gen: [torch.ones(2)]}, TypeError, "make_inputs"),
])
def test_bad_arguments(kwargs, error, match):
    arguments = {"learner_fn": torch.neg, "reference_fn": torch.neg, "make_inputs": make_matrix, **kwargs}
    with pytest.raises(error, match=match):
        compare(**arguments)


# -------------------------------------------------------------------------------------- check_value


def test_check_value_numbers():
    assert check_value("parameter count", 1234, 1234).passed
    assert check_value("parameter count", 1234.0, 1234).passed
    assert check_value("parameter count", torch.tensor(1234), 1234).passed
    wrong = check_value("parameter count", 123457, 123456)
    assert wrong.message == "parameter count: value 123457, expected 123456."
    assert check_value("ratio", 0.3333334, 1 / 3).passed
    assert not check_value("ratio", 0.34, 1 / 3).passed
    assert check_value("ratio", 0.34, 1 / 3, atol=0.01).passed


def test_check_value_other_answers():
    assert check_value("shape", (4, 5), (4, 5)).passed
    assert check_value("shape", (4, 3), (4, 5)).message == "shape: output[1]: value 3, expected 5."
    assert check_value("word", "cube", "cube").passed
    assert check_value("mask", np.eye(2), np.eye(2)).passed
    assert check_value("mask", np.eye(3), np.eye(2)).message == "mask: shape (3, 3), expected (2, 2)."
    assert check_value("answer", "3", 3).message == "answer: got a str, expected a float."


def test_check_value_unanswered_and_raise():
    result = check_value("parameter count", None, 10)
    assert not result.passed and "not answered" in result.message
    with pytest.raises(ExerciseFailed, match="parameter count"):
        check_value("parameter count", 9, 10, raise_on_fail=True)
    with pytest.raises(TypeError, match="name"):
        check_value("", 1, 1)


# ------------------------------------------------------------------------------ CheckResult, report


def test_check_result_displays():
    passed, failed = CheckResult(True, "f is correct."), CheckResult(False, "f: a < b.", "Try <this>.")
    assert repr(passed) == "\u2713 f is correct."
    assert repr(failed) == "\u2717 f: a < b.\n  Hint: Try <this>."
    html, markdown = failed._repr_html_(), failed._repr_markdown_()
    assert "\u2717" in html and "a &lt; b" in html and "<this>" not in html
    assert markdown.startswith("**\u2717** f: a < b.") and "*Hint:* Try <this>." in markdown
    assert "Hint" not in passed._repr_html_()


def test_report_prints(capsys):
    report(CheckResult(False, "f: shape (2,), expected (3,).", "Check the shape."))
    assert capsys.readouterr().out == "\u2717 f: shape (2,), expected (3,).\n  Hint: Check the shape.\n"
    with pytest.raises(TypeError, match="result"):
        report("passed")


@pytest.mark.parametrize("module, names", [
    ("reasoning", ("check_san_hop", "check_bilinear_attention", "check_relate", "check_reinforce_loss")),
    ("few_shot", ("check_prototypes", "check_squared_distances", "check_episode_sampler", "check_confident_labels",
                  "check_exam_clip_loss", "check_exam_xor_fusion", "check_exam_modality_gap",
                  "check_exam_protonet_prediction", "check_exam_zero_shot", "check_exam_cross_attention")),
], ids=["reasoning", "few_shot"])
def test_checks_are_public_and_graded(module, names):
    """Every check of a notebook is reachable as mmcourse.exercises.check_<name> and graded by `mmcourse grade`."""
    import importlib

    from mmcourse import exercises, grading

    checks = importlib.import_module(f"mmcourse.exercises.{module}")
    for name in names:
        assert callable(getattr(exercises, name)) and name in exercises.__all__
        assert grading.EXERCISES[name] is checks.EXERCISES[name]
    assert set(checks.EXERCISES) == set(names)
