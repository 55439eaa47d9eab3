"""Handing out and grading exercises: solutions stripped, exercises read from the solution notebook,
answers reviewed, the grader's cells placed and their replies judged in the grader's process.

Grading real submissions in kernels (honest ones and attacks) is in test_grading_sandbox.py."""
import csv
from pathlib import Path

import nbformat
import pytest
import torch

from challenge_answers import BEST_ADDITIVE, LMF_WEIGHT
from mmcourse import cli
from mmcourse.grading import (GRADER_CELL, _verdict, _with_grader_cells, assign, grade, read_exercises, review,
                              strip_solutions)

SOLUTION = """def double(x):
    \"\"\"Twice x.\"\"\"
    ### BEGIN SOLUTION
    y = x + x
    return y
    ### END SOLUTION
"""

SAMPLER = """def my_sample_hard_negatives(similarity, generator=None):
    ### BEGIN SOLUTION
    diagonal = torch.eye(len(similarity), dtype=torch.bool)
    probabilities = similarity.masked_fill(diagonal, float("-inf")).softmax(dim=1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
    ### END SOLUTION
"""
ANSWERS = {"lmf_weight": LMF_WEIGHT, "best_additive_accuracy": BEST_ADDITIVE, "my_sample_hard_negatives": SAMPLER}
CHECKS = {"lmf_weight": "mmcourse.exercises.check_lmf_weight(lmf_weight)",
          "best_additive_accuracy": "mmcourse.exercises.check_best_additive_accuracy(best_additive_accuracy)",
          "my_sample_hard_negatives": "mmcourse.exercises.check_hard_negative_sampling(my_sample_hard_negatives)"}


def code(source, tags=()):
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def write_notebook(path, cells):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = cells
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def make_solution_notebook(path, answers=None, extra_cells=(), checks=True):
    """A small solution notebook laid out as the lecture's: parameters, imports, then three exercises
    of the course (the LMF weight, the best additive accuracy, hard-negative sampling), each an answer cell
    and a check cell. `answers` replaces answers by function name; `extra_cells` go after the imports."""
    answers = {**ANSWERS, **(answers or {})}
    cells = [code('SCALE = "auto"\nSEED = 0', tags=["parameters"]),
             code("import torch\nimport mmcourse\nimport mmcourse.exercises"),
             *[code(source) for source in extra_cells]]
    for function, answer in answers.items():
        cells.append(nbformat.v4.new_markdown_cell(f"Write `{function}`."))
        cells.append(code(answer))
        cells[-1].outputs = [nbformat.v4.new_output("stream", text="stale output\n")]
        if checks:
            cells.append(code(CHECKS[function]))
    return write_notebook(path, cells)


def test_strip_solutions_keeps_indentation_and_the_rest():
    stub = "# YOUR CODE HERE\n    raise NotImplementedError()"  # nbgrader's, at the marker's indentation
    assert strip_solutions(SOLUTION) == f'def double(x):\n    """Twice x."""\n    {stub}\n'
    two = "a = 1\n### BEGIN SOLUTION\nb = 2\n### END SOLUTION\nc = 3\n### BEGIN SOLUTION\nd = 4\n### END SOLUTION"
    assert strip_solutions(two) == "a = 1\n# YOUR CODE HERE\nraise NotImplementedError()\nc = 3\n" \
                                   "# YOUR CODE HERE\nraise NotImplementedError()"


def test_unbalanced_markers_are_refused():
    with pytest.raises(ValueError, match="BEGIN SOLUTION"):
        strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_assign_writes_a_student_copy_and_leaves_the_source(tmp_path):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    before = source.read_bytes()
    copy = assign(source, tmp_path / "student")
    assert source.read_bytes() == before
    student = nbformat.read(copy, as_version=4)
    assert "raise NotImplementedError" in student.cells[3].source and "torch.einsum" not in student.cells[3].source
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


def test_assign_refuses_to_overwrite_the_solution(tmp_path):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    with pytest.raises(ValueError, match="overwrite"):
        assign(source, tmp_path)


def test_cli_assign(tmp_path, capsys):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    assert cli.main(["assign", str(source), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "ex.ipynb").exists() and "wrote" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the source's exercises


def test_exercises_come_from_the_source_by_check_name(tmp_path):
    tasks = read_exercises(make_solution_notebook(tmp_path / "ex.ipynb"))
    assert [(t.check, t.function, t.exercise.name) for t in tasks] == [
        ("check_lmf_weight", "lmf_weight", "lmf_weight"),
        ("check_best_additive_accuracy", "best_additive_accuracy", "best_additive_accuracy"),
        ("check_hard_negative_sampling", "my_sample_hard_negatives", "sample_hard_negatives")]


@pytest.mark.parametrize("check_cell, error, match", [
    ("mmcourse.exercises.check_my_own(f)", ValueError, "check_my_own, which is not an exercise check"),
    ("mmcourse.exercises.check_lmf_weight(lambda x: x)", ValueError, "by its name"),
    ("mmcourse.exercises.check_lmf_weight(", ValueError, "not valid Python"),
])
def test_a_source_whose_checks_cannot_be_graded_is_refused(tmp_path, check_cell, error, match):
    source = write_notebook(tmp_path / "ex.ipynb", [code("import mmcourse"), code(check_cell)])
    with pytest.raises(error, match=match):
        read_exercises(source)


def test_a_source_without_checks_or_without_a_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no check cell"):
        read_exercises(write_notebook(tmp_path / "ex.ipynb", [code("x = 1")]))
    with pytest.raises(FileNotFoundError, match="missing.ipynb"):
        read_exercises(tmp_path / "missing.ipynb")


LECTURE_NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MIN_EXERCISES = {"01_challenges": 3, "02_representation": 4, "03_alignment": 4}  # as their issues asked


@pytest.mark.parametrize("notebook", LECTURE_NOTEBOOKS, ids=lambda p: p.stem)
def test_lecture_notebooks_hand_out_their_exercises(notebook, tmp_path):
    """Every lecture notebook holds its exercises, each answer followed by the check cell that grades
    it; the grader reads one exercise per answer, and no solution is flagged for review; its student
    copy keeps no answer."""
    solution = nbformat.read(notebook, as_version=4)
    cells = solution.cells
    answers = [i for i, cell in enumerate(cells) if cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source]
    assert len(answers) >= MIN_EXERCISES.get(notebook.stem, 3), f"{notebook.name} has {len(answers)} exercises"
    for i in answers:
        following = next(cell for cell in cells[i + 1:] if cell.cell_type == "code")
        assert "mmcourse.exercises.check_" in following.source, f"{notebook.name}: no check after cell {i}"
    tasks = read_exercises(notebook)
    assert len(tasks) == len(answers)
    assert all(any(f"def {task.function}(" in cells[i].source for i in answers) for task in tasks)
    assert review(solution, tasks) == ""
    student = nbformat.read(assign(notebook, tmp_path), as_version=4)
    assert not any("### BEGIN SOLUTION" in cell.source for cell in student.cells if cell.cell_type == "code")
    assert sum("raise NotImplementedError" in cell.source for cell in student.cells) >= len(answers)


# ------------------------------------------------------------------------------------------ the review


@pytest.mark.parametrize("answer, flagged", [
    ("from mmcourse.models.fusion import low_rank_weight\n\n"
     "def lmf_weight(factors):\n    return low_rank_weight(factors)", "mmcourse.models.fusion.low_rank_weight"),
    ("def lmf_weight(factors):\n    return mmcourse.models.fusion.low_rank_weight(factors)",
     "mmcourse.models.fusion.low_rank_weight"),
    ("def lmf_weight(factors):\n    return fusion.low_rank_weight(factors)", "mmcourse.models.fusion.low_rank_weight"),
    ("def lmf_weight(factors):\n    return TF([2, 2])", "mmcourse.models.fusion.TensorFusion"),
    ("lmf_weight = __import__('mmcourse.models.fusion', fromlist=['x']).low_rank_weight", "mmcourse.models.fusion"),
    ("def lmf_weight(factors):\n    return mmcourse.exercises.challenges.LMF_WEIGHT.reference_fn(factors)",
     "mmcourse.exercises.challenges.LMF_WEIGHT.reference_fn"),
    ("from mmcourse.models.fusion import low_rank_weight as lmf_weight", "mmcourse.models.fusion.low_rank_weight"),
])
def test_answers_that_use_the_package_implementation_are_flagged(tmp_path, answer, flagged):
    setup = "import mmcourse.models.fusion as fusion\nfrom mmcourse.models.fusion import TensorFusion as TF"
    path = make_solution_notebook(tmp_path / "ex.ipynb", {"lmf_weight": answer}, extra_cells=[setup])
    notebook = nbformat.read(path, as_version=4)
    assert review(notebook, read_exercises(path)) == f"lmf_weight (cell 4) uses {flagged}"


@pytest.mark.parametrize("answer, flagged", [
    ("from mmcourse.metrics import best_additive_accuracy", "mmcourse.metrics.best_additive_accuracy"),
    ("def best_additive_accuracy(probabilities, labels):\n"
     "    return metrics.best_additive_accuracy(probabilities, labels)", "mmcourse.metrics.best_additive_accuracy"),
])
def test_an_answer_that_is_the_package_metric_is_flagged(tmp_path, answer, flagged):
    setup = "import mmcourse.metrics as metrics"
    path = make_solution_notebook(tmp_path / "ex.ipynb", {"best_additive_accuracy": answer}, extra_cells=[setup])
    notebook = nbformat.read(path, as_version=4)
    assert review(notebook, read_exercises(path)) == f"best_additive_accuracy (cell 7) uses {flagged}"


def test_honest_answers_and_other_cells_are_not_flagged(tmp_path):
    lecture_cell = ("from mmcourse.models.fusion import low_rank_weight\nlow_rank_weight([torch.ones(2, 3, 1)] * 2)\n"
                    "from mmcourse.metrics import best_additive_accuracy as ceiling\n"
                    "ceiling(torch.full((2, 2), 0.25), torch.eye(2, dtype=torch.long))")
    path = make_solution_notebook(tmp_path / "ex.ipynb", extra_cells=[lecture_cell, "%matplotlib inline"])
    assert review(nbformat.read(path, as_version=4), read_exercises(path)) == ""


# ------------------------------------------------------------------------------- the grader's own cells


def test_grader_cells_follow_the_answers_they_ask_or_close_the_notebook(tmp_path):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    tasks = read_exercises(source)
    without_sampler = make_solution_notebook(tmp_path / "sub.ipynb", {"my_sample_hard_negatives": "pass"})
    notebook = nbformat.read(without_sampler, as_version=4)
    prepared = _with_grader_cells(notebook, [(task, list(task.exercise.draw(1))) for task in tasks], "n0nce")
    asks = {cell.metadata[GRADER_CELL]: i for i, cell in enumerate(prepared.cells) if GRADER_CELL in cell.metadata}
    assert "def lmf_weight" in prepared.cells[asks["check_lmf_weight"] - 1].source
    assert "def best_additive_accuracy" in prepared.cells[asks["check_best_additive_accuracy"] - 1].source
    assert asks["check_hard_negative_sampling"] == len(prepared.cells) - 1  # nothing defines it: at the end
    assert len(prepared.cells) == len(notebook.cells) + 3
    assert "globals().get('lmf_weight')" in prepared.cells[asks["check_lmf_weight"]].source


def lmf_weight(factors):
    weight = factors[0]
    for factor in factors[1:]:
        weight = torch.einsum("rpk,rik->rpik", weight, factor).flatten(1, 2)
    return weight.sum(0)


def ask_and_judge(tmp_path, fn, capsys, seed=3):
    """One exercise's round trip without a kernel: the grader's cell run as a kernel would run it (on
    `fn` as lmf_weight, None: undefined), and what it printed."""
    task = read_exercises(make_solution_notebook(tmp_path / "ex.ipynb"))[0]  # the LMF weight
    trials = list(task.exercise.draw(seed))
    cell = _with_grader_cells(nbformat.v4.new_notebook(), [(task, trials)], "n0nce").cells[0]
    capsys.readouterr()
    exec(cell.source, {} if fn is None else {"lmf_weight": fn})
    return task, trials, capsys.readouterr().out


def test_the_grader_judges_the_values_the_kernel_returns(tmp_path, capsys):
    task, trials, reply = ask_and_judge(tmp_path, lmf_weight, capsys)
    assert _verdict(task, trials, reply, "n0nce").passed
    task, trials, reply = ask_and_judge(tmp_path, lambda factors: lmf_weight(factors[::-1]), capsys)
    verdict = _verdict(task, trials, reply, "n0nce")
    assert not verdict.passed and "values differ" in verdict.message
    assert "your weight lets the last modality vary slowest" in verdict.message
    task, trials, reply = ask_and_judge(tmp_path, None, capsys)
    assert _verdict(task, trials, reply, "n0nce").message == "lmf_weight is not defined."
    task, trials, reply = ask_and_judge(tmp_path, 3, capsys)
    assert _verdict(task, trials, reply, "n0nce").message == "lmf_weight is an int, not a function."


def test_nothing_but_a_readable_reply_with_the_right_values_passes(tmp_path, capsys):
    task, trials, reply = ask_and_judge(tmp_path, lmf_weight, capsys)
    forged = ['{"passed": true}', reply.replace("n0nce", "other"), "n0nce" + "AAAA" + "n0nce", "n0nce!n0nce", ""]
    for stdout in forged:
        verdict = _verdict(task, trials, stdout, "n0nce")
        assert not verdict.passed and "no readable answer came back" in verdict.message
    assert not _verdict(task, trials[:2], reply, "n0nce").passed  # as many answers as trials
    assert _verdict(task, trials, None, "n0nce").message.endswith("before its grader cell finished.")


# ----------------------------------------------------------------------------------- arguments and CLI


@pytest.mark.parametrize("kwargs, match", [({"timeout": 0}, "timeout must be >= 1"),
                                           ({"timeout": -5}, "timeout must be >= 1"),
                                           ({"cpu_seconds": 0}, "cpu_seconds must be >= 1"),
                                           ({"memory_gb": 0}, "memory_gb must be >= 1")])
def test_grade_refuses_limits_below_one(tmp_path, kwargs, match):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    with pytest.raises(ValueError, match=match):
        grade([source], tmp_path / "grades.csv", source, **kwargs)


@pytest.mark.parametrize("timeout", ["0", "-3", "ten"])
def test_cli_grade_refuses_a_timeout_below_one(tmp_path, capsys, timeout):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["grade", "--source", "ex.ipynb", "sub.ipynb", "--timeout", timeout])
    assert stopped.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_cli_grade_reports_unreadable_submissions_in_the_table(tmp_path, capsys):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    broken, empty = tmp_path / "broken.ipynb", tmp_path / "empty.ipynb"
    broken.write_text('{"cells": [')
    empty.write_bytes(b"")
    out = tmp_path / "grades.csv"
    assert cli.main(["grade", "--source", str(source), str(broken), str(empty), "--out", str(out)]) == 0
    assert "0/3 checks passed  (unreadable: NotJSONError" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [(r["submission"], r["passed"], r["checks"], r["score"]) for r in rows] == [
        ("broken.ipynb", "0", "3", "0.000"), ("empty.ipynb", "0", "3", "0.000")]
    assert all(r["status"].startswith("unreadable: ") for r in rows)
    assert all(r["check_lmf_weight"] == "not graded: the submission could not be read." for r in rows)


def test_cli_run_outside_the_course_folder_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--only", "01_*"]) == 2
    err = capsys.readouterr().err
    assert "no course folder (one holding pyproject.toml and notebooks/)" in err and "--notebooks DIR" in err
    assert not (tmp_path / "build").exists()
