"""Handing out and grading exercises: solutions stripped, submissions run in a copy, checks counted."""
import csv
from pathlib import Path

import nbformat
import pytest

from mmcourse import cli
from mmcourse.grading import assign, count_check_cells, grade, strip_solutions

SOLUTION = """def double(x):
    \"\"\"Twice x.\"\"\"
    ### BEGIN SOLUTION
    y = x + x
    return y
    ### END SOLUTION
"""

CHECK_DEFINITION = """import torch
from mmcourse.exercises import compare

def check_double(fn):
    return compare(fn, lambda x: 2 * x, lambda g: (torch.randn(3, generator=g),), name="double")
"""


def make_solution_notebook(path, answer=SOLUTION):
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('SCALE = "auto"\nSEED = 0')
    parameters.metadata["tags"] = ["parameters"]
    answer_cell = nbformat.v4.new_code_cell(answer)
    answer_cell.outputs = [nbformat.v4.new_output("stream", text="stale output\n")]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(CHECK_DEFINITION),
                      nbformat.v4.new_markdown_cell("Write `double`."), answer_cell,
                      nbformat.v4.new_code_cell("check_double(double)")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


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
    assert "raise NotImplementedError" in student.cells[3].source and "x + x" not in student.cells[3].source
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


def test_assign_refuses_to_overwrite_the_solution(tmp_path):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    with pytest.raises(ValueError, match="overwrite"):
        assign(source, tmp_path)


@pytest.mark.slow
def test_grade_counts_passed_checks_and_never_touches_submissions(tmp_path):
    solved = make_solution_notebook(tmp_path / "solved.ipynb")
    wrong = make_solution_notebook(tmp_path / "wrong.ipynb", SOLUTION.replace("x + x", "x * x"))
    blank = assign(make_solution_notebook(tmp_path / "blank.ipynb"), tmp_path / "student")
    looping = make_solution_notebook(tmp_path / "looping.ipynb", "while True:\n    pass\n")
    submissions = [solved, wrong, blank, looping]
    before = [s.read_bytes() for s in submissions]
    grades = grade(submissions, tmp_path / "grades.csv", timeout=25)
    assert [s.read_bytes() for s in submissions] == before
    summary = {g.submission: (g.passed, g.checks, g.status) for g in grades}
    assert summary["solved.ipynb"] == (1, 1, "ok")
    assert summary["wrong.ipynb"] == (0, 1, "ok")
    assert summary["blank.ipynb"] == (0, 1, "ok")
    assert summary["looping.ipynb"] == (0, 1, "timeout")
    rows = list(csv.DictReader((tmp_path / "grades.csv").open()))
    assert [r["score"] for r in rows] == ["1.000", "0.000", "0.000", "0.000"]


def test_cli_assign(tmp_path, capsys):
    source = make_solution_notebook(tmp_path / "ex.ipynb")
    assert cli.main(["assign", str(source), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "ex.ipynb").exists() and "wrote" in capsys.readouterr().out


LECTURE_NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MIN_EXERCISES = {"01_challenges": 3, "02_representation": 4, "03_alignment": 4}  # as their issues asked


@pytest.mark.parametrize("notebook", LECTURE_NOTEBOOKS, ids=lambda p: p.stem)
def test_lecture_notebooks_hand_out_their_exercises(notebook, tmp_path):
    """Every lecture notebook holds its exercises, each answer followed by the check cell that grades
    it, and its student copy keeps no answer."""
    cells = nbformat.read(notebook, as_version=4).cells
    answers = [i for i, cell in enumerate(cells) if cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source]
    assert len(answers) >= MIN_EXERCISES.get(notebook.stem, 3), f"{notebook.name} has {len(answers)} exercises"
    for i in answers:
        following = next(cell for cell in cells[i + 1:] if cell.cell_type == "code")
        assert "mmcourse.exercises.check_" in following.source, f"{notebook.name}: no check after cell {i}"
    assert count_check_cells(notebook) >= len(answers)
    student = nbformat.read(assign(notebook, tmp_path), as_version=4)
    assert not any("### BEGIN SOLUTION" in cell.source for cell in student.cells if cell.cell_type == "code")
    assert sum("raise NotImplementedError" in cell.source for cell in student.cells) >= len(answers)
