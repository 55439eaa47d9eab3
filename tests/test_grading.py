"""Handing out and grading exercises: solutions stripped, exercises read from the solution notebook,
answers reviewed, the grader's cells placed and their replies judged in the grader's process.

Grading real submissions in kernels (honest ones and attacks) is in test_grading_sandbox.py."""
import csv
from pathlib import Path

import nbformat
import pytest
import torch

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

LATE_FUSION = """def late_fusion(logits):
    ### BEGIN SOLUTION
    return torch.stack(list(logits)).mean(0)
    ### END SOLUTION
"""
LMF_COUNT = """def lmf_parameter_count(dims, rank, out_dim):
    ### BEGIN SOLUTION
    return rank * out_dim * sum(d + 1 for d in dims) + out_dim
    ### END SOLUTION
"""
SAMPLER = """def my_sample_hard_negatives(similarity, generator=None):
    ### BEGIN SOLUTION
    diagonal = torch.eye(len(similarity), dtype=torch.bool)
    probabilities = similarity.masked_fill(diagonal, float("-inf")).softmax(dim=1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
    ### END SOLUTION
"""
ANSWERS = {"late_fusion": LATE_FUSION, "lmf_parameter_count": LMF_COUNT, "my_sample_hard_negatives": SAMPLER}
CHECKS = {"late_fusion": "mmcourse.exercises.check_late_fusion(late_fusion)",
          "lmf_parameter_count": "mmcourse.exercises.check_lmf_parameter_count(lmf_parameter_count)",
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
    of the course (late fusion, the LMF parameter count, hard-negative sampling), each an answer cell
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
    assert strip_solutions(SOLUTION) == 'def double(x):\n    """Twice x."""\n    raise NotImplementedError\n'
    two = "a = 1\n### BEGIN SOLUTION\nb = 2\n### END SOLUTION\nc = 3\n### BEGIN SOLUTION\nd = 4\n### END SOLUTION"
    assert strip_solutions(two) == "a = 1\nraise NotImplementedError\nc = 3\nraise NotImplementedError\n"


def test_unbalanced_markers_are_refused():
    with pytest.raises(ValueError, match="BEGIN SOLUTION"):
        strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_assign_writes_a_student_copy_and_leaves_the_source(tmp_path):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    before = source.read_bytes()
    copy = assign(source, tmp_path / "student")
    assert source.read_bytes() == before
    student = nbformat.read(copy, as_version=4)
    assert "raise NotImplementedError" in student.cells[3].source and "torch.stack" not in student.cells[3].source
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
        ("check_late_fusion", "late_fusion", "late_fusion"),
        ("check_lmf_parameter_count", "lmf_parameter_count", "lmf_parameter_count"),
        ("check_hard_negative_sampling", "my_sample_hard_negatives", "sample_hard_negatives")]


@pytest.mark.parametrize("check_cell, error, match", [
    ("mmcourse.exercises.check_my_own(f)", ValueError, "check_my_own, which is not an exercise check"),
    ("mmcourse.exercises.check_late_fusion(lambda x: x)", ValueError, "by its name"),
    ("mmcourse.exercises.check_late_fusion(", ValueError, "not valid Python"),
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
    ("from mmcourse.models.fusion import average_logits\n\ndef late_fusion(logits):\n    return average_logits(logits)",
     "mmcourse.models.fusion.average_logits"),
    ("def late_fusion(logits):\n    return mmcourse.models.fusion.average_logits(logits)",
     "mmcourse.models.fusion.average_logits"),
    ("def late_fusion(logits):\n    return fusion.average_logits(logits)", "mmcourse.models.fusion.average_logits"),
    ("def late_fusion(logits):\n    return TF([2, 2])", "mmcourse.models.fusion.TensorFusion"),
    ("late_fusion = __import__('mmcourse.models.fusion', fromlist=['x']).average_logits", "mmcourse.models.fusion"),
    ("def late_fusion(logits):\n    return mmcourse.exercises.challenges.LATE_FUSION.reference_fn(logits)",
     "mmcourse.exercises.challenges.LATE_FUSION.reference_fn"),
    ("from mmcourse.models.fusion import average_logits as late_fusion", "mmcourse.models.fusion.average_logits"),
])
def test_answers_that_use_the_package_implementation_are_flagged(tmp_path, answer, flagged):
    setup = "import mmcourse.models.fusion as fusion\nfrom mmcourse.models.fusion import TensorFusion as TF"
    path = make_solution_notebook(tmp_path / "ex.ipynb", {"late_fusion": answer}, extra_cells=[setup])
    notebook = nbformat.read(path, as_version=4)
    assert review(notebook, read_exercises(path)) == f"late_fusion (cell 4) uses {flagged}"


def test_honest_answers_and_other_cells_are_not_flagged(tmp_path):
    lecture_cell = "from mmcourse.models.fusion import average_logits\naverage_logits([torch.ones(2, 3)])"
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
    assert "def late_fusion" in prepared.cells[asks["check_late_fusion"] - 1].source
    assert "def lmf_parameter_count" in prepared.cells[asks["check_lmf_parameter_count"] - 1].source
    assert asks["check_hard_negative_sampling"] == len(prepared.cells) - 1  # nothing defines it: at the end
    assert len(prepared.cells) == len(notebook.cells) + 3
    assert "globals().get('late_fusion')" in prepared.cells[asks["check_late_fusion"]].source


def ask_and_judge(tmp_path, fn, capsys, seed=3):
    """One exercise's round trip without a kernel: the grader's cell run as a kernel would run it (on
    `fn` as late_fusion, None: undefined), and what it printed."""
    task = read_exercises(make_solution_notebook(tmp_path / "ex.ipynb"))[0]  # late fusion
    trials = list(task.exercise.draw(seed))
    cell = _with_grader_cells(nbformat.v4.new_notebook(), [(task, trials)], "n0nce").cells[0]
    capsys.readouterr()
    exec(cell.source, {} if fn is None else {"late_fusion": fn})
    return task, trials, capsys.readouterr().out


def test_the_grader_judges_the_values_the_kernel_returns(tmp_path, capsys):
    task, trials, reply = ask_and_judge(tmp_path, lambda logits: torch.stack(list(logits)).mean(0), capsys)
    assert _verdict(task, trials, reply, "n0nce").passed
    task, trials, reply = ask_and_judge(tmp_path, lambda logits: torch.stack(list(logits)).sum(0), capsys)
    verdict = _verdict(task, trials, reply, "n0nce")
    assert not verdict.passed and "values differ" in verdict.message
    task, trials, reply = ask_and_judge(tmp_path, None, capsys)
    assert _verdict(task, trials, reply, "n0nce").message == "late_fusion is not defined."
    task, trials, reply = ask_and_judge(tmp_path, 3, capsys)
    assert _verdict(task, trials, reply, "n0nce").message == "late_fusion is an int, not a function."


def test_nothing_but_a_readable_reply_with_the_right_values_passes(tmp_path, capsys):
    task, trials, reply = ask_and_judge(tmp_path, lambda logits: torch.stack(list(logits)).mean(0), capsys)
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
    assert all(r["check_late_fusion"] == "not graded: the submission could not be read." for r in rows)


def test_cli_run_outside_the_course_folder_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--only", "01_*"]) == 2
    err = capsys.readouterr().err
    assert "no course folder (one holding pyproject.toml and notebooks/)" in err and "--notebooks DIR" in err
    assert not (tmp_path / "build").exists()
