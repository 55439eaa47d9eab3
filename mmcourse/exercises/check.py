"""Building blocks of the notebooks' exercise checks: compare a learner's answer with the reference.

A check never raises at the learner (unless asked to, for autograders: `raise_on_fail=True`, or
MMCOURSE_CHECKS_RAISE=1 in the environment, which nbgrader's autograder needs to withhold a check
cell's points): it returns a `CheckResult`
whose message is one plain sentence saying what differs, e.g. "fusion: shape (4, 3), expected
(4, 5)." and, when it fails, a hint. `compare` runs a learner's function and the reference on the
same fresh random inputs; `check_value` checks a single answer such as a parameter count.

Every `check_<name>` is an `Exercise` in three pieces, so that `mmcourse grade` can run them in two
processes: `draw` (inputs and expected values, from a seed), `answer` (what the learner's function
produced on one trial's inputs: the only piece the grader runs in a submission's kernel) and
`judge` (the verdict). `Comparison` is the exercise behind `compare`; `answer_for_grader` is what
the grader's cells run in a submission's kernel.
"""
from __future__ import annotations

import base64
import copy
import html
import io
import inspect
import math
import numbers
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..world.scene import check_count, check_seed

GENERATORS = ("torch", "numpy")
RAISE_ENV = "MMCOURSE_CHECKS_RAISE"  # "1": every failed check raises ExerciseFailed (for autograders)

HINT_NOT_IMPLEMENTED = ("Write your answer in place of `raise NotImplementedError()` (between `### BEGIN SOLUTION` "
                        "and `### END SOLUTION` in the solution notebook), then run the cell again.")
HINT_EXCEPTION = "Call your function on a small example in a cell of its own to see where it fails."
HINT_NOT_CALLABLE = "Pass the function itself, without calling it: check_x(my_fn), not check_x(my_fn())."
HINT_BY_KIND = {
    "type": "Return the kind of object the exercise asks for (a tensor, a tuple, a float ...).",
    "shape": "Print the shape after each step; check which dimension you sum, average or concatenate over.",
    "dtype": "Check the dtype of the tensors you create (torch.zeros, torch.arange ...) and any .float()/.long().",
    "length": "Return exactly the items the exercise asks for, in its order.",
    "keys": "Return a dict with exactly the keys the exercise names.",
    "value": "Compare your formula with the one in the exercise step by step on a tiny input.",
    "grad": ("Keep the computation differentiable: no .detach(), .item(), .numpy() or in-place edits "
             "between the inputs and the output."),
}


class ExerciseFailed(AssertionError):
    """Raised instead of returning a failed `CheckResult` when a check runs with `raise_on_fail=True`."""


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one check: `passed`, one plain sentence `message`, and an optional `hint`."""

    passed: bool
    message: str
    hint: str | None = None

    def __bool__(self) -> bool:
        return self.passed

    @property
    def mark(self) -> str:
        return "\u2713" if self.passed else "\u2717"  # check mark or cross

    def __repr__(self) -> str:
        lines = [f"{self.mark} {self.message}"]
        if self.hint:
            lines.append(f"  Hint: {self.hint}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#c62828"
        body = f'<b style="color:{color}">{self.mark}</b> {html.escape(self.message)}'
        if self.hint:
            body += f"<br><i>Hint:</i> {html.escape(self.hint)}"
        return f"<div>{body}</div>"

    def _repr_markdown_(self) -> str:
        text = f"**{self.mark}** {self.message}"
        if self.hint:
            text += f"  \n*Hint:* {self.hint}"
        return text


def report(result: CheckResult) -> None:
    """Print a check's verdict (mark, sentence and hint)."""
    if not isinstance(result, CheckResult):
        raise TypeError(f"result must be a CheckResult, got {type(result).__name__}")
    print(repr(result))


class _Mismatch(Exception):
    """Internal: a difference between a learner's output and the reference's, and its kind."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def compare(learner_fn: Callable, reference_fn: Callable, make_inputs: Callable, trials: int = 5,
            seed: int = 0, atol: float = 1e-5, rtol: float = 1e-4, check_grad: bool = False,
            name: str | None = None, hint: str | None = None, generator: str = "torch",
            raise_on_fail: bool = False, mistakes: dict[str, Callable] | None = None) -> CheckResult:
    """Run `learner_fn` and `reference_fn` on `trials` fresh random inputs and compare what they return.

    `make_inputs(gen)` builds one trial's inputs from `gen`, a `torch.Generator` (or a
    `numpy.random.Generator` with `generator="numpy"`) seeded from `(seed, trial)`; it returns an
    args tuple or a kwargs dict. Each function gets its own deep copy, so a learner that edits its
    inputs in place cannot change what the reference sees, and both run from the same global torch
    RNG state. Outputs may be tensors, arrays, numbers, strings or tuples/lists/dicts of those; their
    type, shape, dtype and values must match within `atol + rtol * |expected|`. With `check_grad`,
    the gradients of a fixed random projection of the outputs w.r.t. every floating input tensor
    that requires grad must match too. `hint` replaces the default hint of a failed check.
    `mistakes` maps a sentence naming a typical mistake ("the softmax runs over the queries, not
    the keys") to a function that makes it: when the learner's values differ from the reference's
    but equal that function's on the same inputs, the verdict says that sentence.
    """
    name = name or getattr(learner_fn, "__name__", None) or "your function"
    exercise = Comparison(name, reference_fn, make_inputs, trials, atol, rtol, check_grad, hint, generator,
                          dict(mistakes or {}))
    return exercise.check(learner_fn, seed, raise_on_fail)


def check_value(name: str, learner_value: Any, expected: Any, atol: float = 1e-6, rtol: float = 1e-6,
                hint: str | None = None, raise_on_fail: bool = False) -> CheckResult:
    """Check a single answer (a number, an array, a tuple ...) against the expected one.

    Numbers compare by value whatever their type: 1234, 1234.0 and a 0-d tensor holding 1234 all
    match an expected 1234. `None` counts as "not answered yet".
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    _check_tolerance("atol", atol)
    _check_tolerance("rtol", rtol)
    if learner_value is None and expected is not None:
        result = CheckResult(False, f"{name} is not answered yet (it is None).", HINT_NOT_IMPLEMENTED)
        return _finish(result, raise_on_fail)
    if _is_real_number(expected):
        learner_value = _as_number(learner_value)
        expected = float(expected)
    try:
        _compare_outputs(learner_value, expected, "", atol, rtol)
    except _Mismatch as mismatch:
        result = CheckResult(False, f"{name}: {mismatch.detail}.", hint or HINT_BY_KIND[mismatch.kind])
    else:
        result = CheckResult(True, f"{name} is correct.")
    return _finish(result, raise_on_fail)


def _finish(result: CheckResult, raise_on_fail: bool) -> CheckResult:
    if (raise_on_fail or _raise_requested()) and not result.passed:
        raise ExerciseFailed(result.message)
    return result


def _raise_requested() -> bool:
    """True when MMCOURSE_CHECKS_RAISE is "1"; False when it is "0" or unset."""
    value = os.environ.get(RAISE_ENV, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{RAISE_ENV}={value!r} is not allowed; expected '1' (failed checks raise) or '0'")
    return value == "1"


def _check_tolerance(name: str, value) -> None:
    if not _is_real_number(value) or not value >= 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _is_real_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _as_number(value):
    """A learner's numeric answer as a float when it is a number or holds exactly one (0-d tensor/array)."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        value = value.item()
    return float(value) if _is_real_number(value) else value


# --------------------------------------------------------------------------------------------- exercises


@dataclass
class Trial:
    """One trial of a check: the `request` that the learner's side gets (its inputs and seeds) and
    what the judge `expected`, which the learner's side never sees."""

    request: dict
    expected: Any


class Exercise(ABC):
    """An exercise's check in the three pieces that the notebook's `check_<name>` and `mmcourse grade`
    share, so that both decide a verdict the same way:

    - `draw(seed)` yields the trials: inputs drawn from `seed` and what the reference expects of them;
    - `answer(fn, request)`, a module-level function, calls a learner's `fn` on one trial's `request`
      and returns an *answer*, a dict of what it produced (tensors, numbers, strings and containers
      of them): `{"output": ...}`, `{"not_implemented": True}` or `{"error": (type name, message)}`;
    - `judge(trial, answer)` compares an answer with the trial's expectation: a `CheckResult`.

    `check` runs all three here, in the learner's kernel. `mmcourse grade` runs `draw` and `judge`
    in its own process and only `answer` in a submission's kernel, so what a submission does there
    cannot change a verdict, only the values its function returns.
    """

    name: str
    answer: Callable[[Callable, dict], dict]  # a module-level function, named to the kernel by reference

    @abstractmethod
    def draw(self, seed: int) -> Iterator[Trial]:
        """The trials of a check from `seed`."""

    @abstractmethod
    def judge(self, trial: Trial, answer: dict) -> CheckResult:
        """The verdict on one trial's answer."""

    def verdict(self, trials_and_answers: Iterable[tuple[Trial, dict]]) -> CheckResult:
        """The first failed trial's verdict, else the last trial's (there is at least one trial)."""
        for trial, answer in trials_and_answers:
            result = self.judge(trial, answer)
            if not result.passed:
                return result
        return result

    def check(self, fn: Callable, seed: int = 0, raise_on_fail: bool = False) -> CheckResult:
        """Draw the trials from `seed`, call `fn` on each (stopping at the first failure) and judge it."""
        seed = check_seed(seed)
        if callable(fn):
            result = self.verdict((trial, self.answer(fn, trial.request)) for trial in self.draw(seed))
        else:
            result = CheckResult(False, f"{self.name}: expected a function, got {_a(fn)}.", HINT_NOT_CALLABLE)
        return _finish(result, raise_on_fail)


def answer_for_grader(fn: Callable, question: str, nonce: str) -> None:
    """Run by `mmcourse grade`'s cell of one exercise in a submission's kernel: call the student's `fn`
    on every request of `question` (`encode`d by the grader: its inputs and the exercise's `answer`)
    and print the answers, `encode`d between two `nonce` markers. Nothing is judged here: the grader
    judges the answers in its own process."""
    asked = torch.load(io.BytesIO(base64.b64decode(question)), weights_only=False)  # the grader's own bytes
    if callable(fn):
        reply = {"answers": [asked["answer"](fn, request) for request in asked["requests"]]}
    else:
        reply = {"not_callable": type(fn).__name__}
    print(f"{nonce}{encode(reply)}{nonce}")


def encode(value) -> str:
    """`value` as text: base64 of its `torch.save` bytes."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def random_sizes(gen: torch.Generator, count: int, low: int = 2, high: int = 6) -> list[int]:
    """`count` random ints in [low, high] from `gen`: the sizes of a trial's random inputs."""
    return [int(v) for v in torch.randint(low, high + 1, (count,), generator=gen)]


def not_implemented(name: str, hint: str = HINT_NOT_IMPLEMENTED) -> CheckResult:
    """The verdict on an answer that still raises `NotImplementedError`."""
    return CheckResult(False, f"{name} is not implemented yet.", hint)


def error_summary(error: BaseException) -> tuple[str, str]:
    """An exception as an answer carries it: its type name and its message."""
    return type(error).__name__, str(error)


def answer_call(fn: Callable, request: dict) -> dict:
    """What `fn` did on one trial of a `Comparison`: its output and, when the request carries the
    projection weights, the gradients of that projection by argument name (None when the output
    carries none back); or the error it raised."""
    try:
        got = _call(fn, request["inputs"], request["seed"])
    except NotImplementedError:
        return {"not_implemented": True}
    except Exception as error:  # a learner's bug: the judge reports it in one sentence
        return {"error": error_summary(error)}
    answer = {"output": got.output}
    if request["weights"] is not None:
        try:
            answer["gradients"] = _learner_gradients(got, request["weights"], request["arg_names"])
        except Exception as error:  # raised by the learner's backward pass
            answer["backward_error"] = error_summary(error)
    return answer


@dataclass(frozen=True)
class Comparison(Exercise):
    """An exercise whose answer is a function compared with `reference_fn` on random inputs; see `compare`."""

    name: str
    reference_fn: Callable
    make_inputs: Callable
    trials: int = 5
    atol: float = 1e-5
    rtol: float = 1e-4
    check_grad: bool = False
    hint: str | None = None
    generator: str = "torch"
    mistakes: dict[str, Callable] = field(default_factory=dict)
    answer = staticmethod(answer_call)

    def __post_init__(self):
        for arg_name, fn in (("reference_fn", self.reference_fn), ("make_inputs", self.make_inputs)):
            if not callable(fn):
                raise TypeError(f"{arg_name} must be callable, got {type(fn).__name__}")
        check_count("trials", self.trials, 1)
        _check_tolerance("atol", self.atol)
        _check_tolerance("rtol", self.rtol)
        if self.generator not in GENERATORS:
            raise ValueError(f"generator={self.generator!r} is unknown; expected one of {GENERATORS}")
        if not all(isinstance(k, str) and callable(v) for k, v in self.mistakes.items()):
            raise TypeError("mistakes must map sentences (str) to functions that make that mistake")

    def draw(self, seed: int) -> Iterator[Trial]:
        for trial in range(self.trials):
            trial_seed = _trial_seed(seed, trial)
            inputs = _make_trial_inputs(self.make_inputs, self.generator, trial_seed)
            expected = _call(self.reference_fn, inputs, trial_seed)
            arg_names = _argument_names(self.reference_fn, inputs)
            gradients = _reference_gradients(expected, arg_names, trial_seed) if self.check_grad else None
            request = {"inputs": inputs, "seed": trial_seed, "arg_names": arg_names,
                       "weights": gradients.weights if gradients else None}
            yield Trial(request, (expected.output, gradients))

    def judge(self, trial: Trial, answer: dict) -> CheckResult:
        expected_output, expected_gradients = trial.expected
        if answer.get("not_implemented"):
            return not_implemented(self.name)
        if "error" in answer:
            return _exception_result(self.name, answer["error"])
        try:
            _compare_outputs(answer.get("output"), expected_output, "", self.atol, self.rtol)
            if self.check_grad and "backward_error" in answer:
                return _exception_result(self.name, answer["backward_error"])
            if self.check_grad:
                _compare_gradients(answer.get("gradients"), expected_gradients, self.atol, self.rtol)
        except _Mismatch as mismatch:
            known = _known_mistake(answer.get("output"), self.mistakes, trial.request, self.atol, self.rtol)
            detail = f"{mismatch.detail}; {known}" if known else mismatch.detail
            return CheckResult(False, f"{self.name}: {detail}.", self.hint or HINT_BY_KIND[mismatch.kind])
        checked = "values and gradients" if self.check_grad else "values"
        return CheckResult(True, f"{self.name} matches the reference ({checked}) on {self.trials} random inputs.")


def _known_mistake(output, mistakes: dict[str, Callable], request: dict, atol: float, rtol: float) -> str | None:
    """The sentence of the first mistake whose function returns what the learner returned."""
    for sentence, mistaken_fn in mistakes.items():
        try:
            _compare_outputs(output, _call(mistaken_fn, request["inputs"], request["seed"]).output, "", atol, rtol)
        except Exception:  # a mismatch, or the mistaken function cannot run on these inputs
            continue
        return sentence
    return None


def _trial_seed(seed: int, trial: int) -> int:
    return int(np.random.SeedSequence([seed, trial]).generate_state(1)[0])


def _make_trial_inputs(make_inputs, generator: str, trial_seed: int):
    gen = (torch.Generator().manual_seed(trial_seed) if generator == "torch"
           else np.random.default_rng(trial_seed))
    inputs = make_inputs(gen)
    if not isinstance(inputs, (tuple, dict)):
        raise TypeError(f"make_inputs must return an args tuple or a kwargs dict, got {_a(inputs)}")
    return inputs


@dataclass
class _Call:
    """One function call: the (copied) inputs it received and what it returned."""

    args: tuple
    kwargs: dict
    output: Any


def _call(fn, inputs, trial_seed: int) -> _Call:
    """Call `fn` on a deep copy of `inputs`, from a global torch RNG state fixed by `trial_seed`."""
    inputs = copy.deepcopy(inputs)
    args, kwargs = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    with torch.random.fork_rng():  # the caller's RNG states come back afterwards
        torch.manual_seed(trial_seed)
        output = fn(*args, **kwargs)
    return _Call(args, kwargs, output)


def _exception_result(name: str, error: tuple[str, str]) -> CheckResult:
    """The verdict on an answer that raised: its type and the first line of its message."""
    type_name, message = error
    lines = message.strip().splitlines()
    detail = f": {lines[0][:200].rstrip('.')}" if lines else ""
    return CheckResult(False, f"{name} raised {type_name}{detail}.", HINT_EXCEPTION)


def _a(value) -> str:
    """What `value` is, for a message: 'a torch.Tensor', 'an int', 'None (nothing was returned?)'."""
    if value is None:
        return "None (is a `return` missing?)"
    return _a_type(type(value))


def _a_type(kind: type) -> str:
    if issubclass(kind, torch.Tensor):
        name = "torch.Tensor"
    elif issubclass(kind, np.ndarray):
        name = "numpy.ndarray"
    else:
        name = kind.__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


# ------------------------------------------------------------------------------------- comparing outputs


def _compare_outputs(got, expected, path: str, atol: float, rtol: float) -> None:
    """Raise `_Mismatch` at the first difference between `got` and `expected`; `path` locates them."""
    where = f"output{path}: " if path else ""
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        _require_type(got, torch.Tensor if isinstance(expected, torch.Tensor) else np.ndarray, where)
        _compare_arrays(got, expected, where, atol, rtol)
    elif isinstance(expected, (bool, np.bool_)):
        _require(isinstance(got, (bool, np.bool_)), "type", f"{where}got {_a(got)}, expected a bool")
        _require(got == expected, "value", f"{where}value {got}, expected {expected}")
    elif _is_real_number(expected):
        wanted_type = int if isinstance(expected, numbers.Integral) else float
        _require(isinstance(got, numbers.Integral if wanted_type is int else numbers.Real) and _is_real_number(got),
                 "type", f"{where}got {_a(got)}, expected {_a_type(wanted_type)}")
        _require(_close(float(got), float(expected), atol, rtol), "value",
                 f"{where}value {_fmt(got)}, expected {_fmt(expected)}")
    elif isinstance(expected, (tuple, list)):
        _require_type(got, type(expected), where)
        _require(len(got) == len(expected), "length", f"{where}got {len(got)} items, expected {len(expected)}")
        for i, (got_item, expected_item) in enumerate(zip(got, expected)):
            _compare_outputs(got_item, expected_item, f"{path}[{i}]", atol, rtol)
    elif isinstance(expected, dict):
        _require_type(got, dict, where)
        missing = [key for key in expected if key not in got]
        extra = [key for key in got if key not in expected]
        _require(not missing, "keys", f"{where}missing key {missing[0]!r}" if missing else "")
        _require(not extra, "keys", f"{where}unexpected key {extra[0]!r}" if extra else "")
        for key, expected_item in expected.items():
            _compare_outputs(got[key], expected_item, f"{path}[{key!r}]", atol, rtol)
    else:
        _require_type(got, type(expected), where)
        _require(got == expected, "value", f"{where}got {got!r}, expected {expected!r}")


def _require(condition: bool, kind: str, detail: str) -> None:
    if not condition:
        raise _Mismatch(kind, detail)


def _require_type(got, expected_type: type, where: str) -> None:
    _require(isinstance(got, expected_type), "type", f"{where}got {_a(got)}, expected {_a_type(expected_type)}")


def _close(got: float, expected: float, atol: float, rtol: float) -> bool:
    if math.isnan(expected):
        return math.isnan(got)
    return abs(got - expected) <= atol + rtol * abs(expected)


def _compare_arrays(got, expected, where: str, atol: float, rtol: float, kind: str = "value",
                    differ: str = "values differ") -> None:
    """Shape, dtype, then values of two tensors (or two arrays); `differ` starts the values sentence."""
    _require(tuple(got.shape) == tuple(expected.shape), "shape",
             f"{where}shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    _require(got.dtype == expected.dtype, "dtype", f"{where}dtype {got.dtype}, expected {expected.dtype}")
    got_values, expected_values = _to_numpy(got), _to_numpy(expected)
    if np.issubdtype(expected_values.dtype, np.inexact):
        close = np.isclose(got_values, expected_values, atol=atol, rtol=rtol, equal_nan=True)
    else:
        close = got_values == expected_values
    if close.all():
        return
    diff = np.abs(got_values.astype(np.complex128) - expected_values.astype(np.complex128))  # (..., ) abs diff
    diff = np.where(close, 0.0, np.nan_to_num(diff, nan=np.inf))  # a NaN on one side only is a mismatch
    index = np.unravel_index(int(np.argmax(diff)), diff.shape)
    at = f" at index {tuple(int(i) for i in index)}" if diff.ndim else ""
    raise _Mismatch(kind, f"{where}{differ}{at}: {_fmt(got_values[index])} vs {_fmt(expected_values[index])} "
                          f"expected (max abs diff {_fmt(diff.max())})")


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.dtype == torch.bfloat16:  # numpy has no bfloat16
            array = array.float()
        return array.numpy()
    return np.asarray(array)


def _fmt(value) -> str:
    """A number for a message: whole numbers in full (parameter counts), others to 4 significant digits."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}" if isinstance(value, (float, complex)) else str(value)


# ---------------------------------------------------------------------------------- comparing gradients


@dataclass
class _Gradients:
    """The reference's gradients of a random projection of its outputs, by input argument name."""

    weights: list[torch.Tensor]  # one per floating output tensor, same shape
    by_argument: dict[str, torch.Tensor | None]


def _reference_gradients(expected: _Call, arg_names: list[str], trial_seed: int) -> _Gradients:
    """Gradients of the reference w.r.t. every floating input tensor that requires grad.

    The projection sums every floating output tensor weighted elementwise by fixed random weights
    (a plain sum would hide errors such as a wrong softmax backward, whose rows sum to zero).
    """
    leaves = _grad_leaves(expected, arg_names)
    if not leaves:
        raise ValueError("check_grad=True but make_inputs returned no floating tensor that requires grad")
    outputs = _grad_outputs(expected.output)
    if not outputs:
        raise ValueError("check_grad=True but reference_fn's output carries no gradient back to its inputs")
    gen = torch.Generator().manual_seed(trial_seed)
    weights = [torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device) for out in outputs]
    return _Gradients(weights, dict(zip(leaves, _gradients(outputs, weights, list(leaves.values())))))


def _learner_gradients(got: _Call, weights: list[torch.Tensor],
                       arg_names: list[str]) -> dict[str, torch.Tensor | None] | None:
    """Gradients of the learner's outputs projected by `weights`, by input argument name; None when
    its output carries no gradient back to the inputs."""
    outputs = _grad_outputs(got.output)
    if len(outputs) != len(weights):
        return None
    leaves = _grad_leaves(got, arg_names)
    return dict(zip(leaves, _gradients(outputs, weights, list(leaves.values()))))


def _compare_gradients(got: dict[str, torch.Tensor | None] | None, expected: _Gradients, atol: float,
                       rtol: float) -> None:
    """Raise `_Mismatch` when the learner's gradients (by argument name) differ from the reference's."""
    _require(got is not None, "grad", "the output carries no gradient back to the inputs (was it detached?)")
    for arg_name, expected_grad in expected.by_argument.items():
        if expected_grad is None:
            continue
        subject = f"gradient w.r.t. argument {arg_name!r}"
        _require(got.get(arg_name) is not None, "grad", f"{subject} is missing (the output does not depend on it)")
        _compare_arrays(got[arg_name], expected_grad, "", atol, rtol, kind="grad", differ=f"{subject} differs")


def _argument_names(fn, inputs) -> list[str]:
    """A name for each top-level input, in order: its parameter name in `fn`, else `args[i]`."""
    args, kwargs = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature
        parameters = []
    positional = [p.name for p in parameters
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    names = [positional[i] if i < len(positional) else f"args[{i}]" for i in range(len(args))]
    return names + list(kwargs)


def _grad_leaves(call: _Call, arg_names: list[str]) -> dict[str, torch.Tensor]:
    """The floating tensors among a call's inputs that require grad, by argument name (nested ones too)."""
    leaves: dict[str, torch.Tensor] = {}
    for arg_name, value in zip(arg_names, list(call.args) + list(call.kwargs.values())):
        for suffix, tensor in _tensors(value, ""):
            if tensor.is_floating_point() and tensor.requires_grad:
                leaves[arg_name + suffix] = tensor
    return leaves


def _grad_outputs(output) -> list[torch.Tensor]:
    return [t for _, t in _tensors(output, "") if t.is_floating_point() and t.requires_grad]


def _tensors(value, path: str):
    """(path, tensor) for every tensor in a nest of tuples, lists and dicts, in order."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{path}[{key!r}]")


def _gradients(outputs, weights, leaves) -> list[torch.Tensor | None]:
    projection = sum((out * w).sum() for out, w in zip(outputs, weights))
    return list(torch.autograd.grad(projection, leaves, allow_unused=True))
