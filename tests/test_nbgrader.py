"""nbgrader interoperability.

Always: every notebook's exercise cells carry nbgrader's cell metadata (a solution cell per answer, an
autograded test cell worth one point per check, stable grade ids), and a failed check raises under
MMCOURSE_CHECKS_RAISE=1. With nbgrader installed (the `grading` extra, which `dev` includes), its own
`generate_assignment` must write the same student code as `mmcourse assign`, and its own `autograde`
must give the points of the checks a submission passes and withhold the others.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from challenge_answers import BEST_ADDITIVE, LMF_WEIGHT

import mmcourse.exercises
from mmcourse.exercises.check import ExerciseFailed
from mmcourse.grading import BEGIN, END, POINTS, assign, nbgrader_metadata, read_exercises, strip_solutions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def with_nbgrader_metadata(notebook):
    """`notebook` with `nbgrader_metadata` written into its cells (as the committed notebooks carry it)."""
    for index, metadata in nbgrader_metadata(notebook).items():
        notebook.cells[index].metadata["nbgrader"] = metadata
    return notebook


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercise_cells_carry_nbgrader_metadata(notebook):
    cells = nbformat.read(notebook, as_version=4).cells
    found = {index: cell.metadata["nbgrader"] for index, cell in enumerate(cells) if "nbgrader" in cell.metadata}
    assert found == nbgrader_metadata(nbformat.read(notebook, as_version=4), notebook.name), \
        "run the metadata through mmcourse.grading.nbgrader_metadata again: an exercise cell changed"
    grade_ids = [metadata["grade_id"] for metadata in found.values()]
    assert len(grade_ids) == len(set(grade_ids)), f"grade ids repeat: {sorted(grade_ids)}"
    checks = [metadata for metadata in found.values() if metadata["grade"]]
    answers = [index for index, metadata in found.items() if metadata["solution"]]
    assert len(checks) == len(answers) == len(read_exercises(notebook))
    assert all(metadata["points"] == POINTS and metadata["locked"] for metadata in checks)
    assert all(BEGIN in cells[index].source and END in cells[index].source for index in answers)


def test_nbgrader_metadata_names_a_check_without_its_answer():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("def f(x):\n    return x"),
                                               nbformat.v4.new_code_cell("mmcourse.exercises.check_lmf_weight(f)")])
    with pytest.raises(ValueError, match=r"cell 1 calls check_lmf_weight\(f\), but no earlier cell defines f"):
        nbgrader_metadata(notebook)


def test_failed_checks_raise_only_when_the_environment_asks(monkeypatch):
    def wrong(factors):
        raise NotImplementedError()

    monkeypatch.delenv("MMCOURSE_CHECKS_RAISE", raising=False)
    assert not mmcourse.exercises.check_lmf_weight(wrong).passed
    monkeypatch.setenv("MMCOURSE_CHECKS_RAISE", "1")
    with pytest.raises(ExerciseFailed):
        mmcourse.exercises.check_lmf_weight(wrong)
    monkeypatch.setenv("MMCOURSE_CHECKS_RAISE", "yes")
    with pytest.raises(ValueError, match="MMCOURSE_CHECKS_RAISE='yes'"):
        mmcourse.exercises.check_lmf_weight(wrong)


# --- with nbgrader's own apps ---------------------------------------------------------------------

def nbgrader_api(course: Path):
    """nbgrader's API over the course folder `course` (source/, release/, submitted/, autograded/)."""
    pytest.importorskip("nbgrader", reason="nbgrader is not installed: pip install -e '.[grading]'")
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    config = Config()
    config.CourseDirectory.root = str(course)
    config.CourseDirectory.course_id = "mmcourse"
    config.CourseDirectory.db_url = f"sqlite:///{course / 'gradebook.db'}"
    config.Execute.timeout = 300
    return NbGraderAPI(config=config)


def released(api, course: Path, source: Path, assignment: str = "ps"):
    """nbgrader's student copy of `source`, written by its generate_assignment."""
    (course / "source" / assignment).mkdir(parents=True, exist_ok=True)
    shutil.copy(source, course / "source" / assignment / source.name)
    result = api.generate_assignment(assignment, force=True, create=True)
    assert result["success"], f"nbgrader generate_assignment failed:\n{result['error']}\n{result['log'][-3000:]}"
    return course / "release" / assignment / source.name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbgrader_generate_assignment_writes_the_code_mmcourse_assign_writes(notebook, tmp_path):
    api = nbgrader_api(tmp_path / "course")
    theirs = nbformat.read(released(api, tmp_path / "course", notebook), as_version=4)
    ours = nbformat.read(assign(notebook, tmp_path / "ours"), as_version=4)
    assert len(theirs.cells) == len(ours.cells)
    for index, (their_cell, our_cell) in enumerate(zip(theirs.cells, ours.cells)):
        assert their_cell.source == our_cell.source, f"{notebook.name} cell {index} differs from nbgrader's"
        assert their_cell.get("outputs", []) == our_cell.get("outputs", []) == []


ANSWERED = {"lmf_weight": LMF_WEIGHT, "best_additive_accuracy": BEST_ADDITIVE}


def exercise_notebook(path: Path) -> Path:
    """A small solution notebook of two of notebook 01's exercises, with nbgrader's metadata."""
    cells = [nbformat.v4.new_code_cell("import torch\nimport mmcourse.exercises")]
    for function, answer in ANSWERED.items():
        cells += [nbformat.v4.new_markdown_cell(f"Write `{function}`."), nbformat.v4.new_code_cell(answer),
                  nbformat.v4.new_code_cell(f"mmcourse.exercises.check_{function}({function})")]
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(with_nbgrader_metadata(notebook), path)
    return path


def test_nbgrader_autograde_gives_the_points_of_passed_checks_only(tmp_path, monkeypatch):
    """One answer written, one left as the stub: 1 of 2 points, by nbgrader's own autograder."""
    course = tmp_path / "course"
    api = nbgrader_api(course)
    release = released(api, course, exercise_notebook(tmp_path / "ex.ipynb"))
    submission = nbformat.read(release, as_version=4)
    answer_cell = next(cell for cell in submission.cells if cell.metadata.get("nbgrader", {}).get("grade_id")
                       == "answer_lmf_weight")
    assert answer_cell.source == strip_solutions(ANSWERED["lmf_weight"])
    answer_cell.source = ANSWERED["lmf_weight"]
    (course / "submitted" / "alice" / "ps").mkdir(parents=True)
    nbformat.write(submission, course / "submitted" / "alice" / "ps" / release.name)

    from nbgrader.api import Gradebook

    with Gradebook(api.coursedir.db_url) as gradebook:
        gradebook.add_student("alice")
    monkeypatch.setenv("MMCOURSE_CHECKS_RAISE", "1")  # the kernel nbgrader starts inherits it
    result = api.autograde("ps", "alice", force=True, create=True)
    assert result["success"], f"nbgrader autograde failed:\n{result['error']}\n{result['log'][-3000:]}"
    with Gradebook(api.coursedir.db_url) as gradebook:
        graded = gradebook.find_submission("ps", "alice")
        assert (graded.score, graded.max_score) == (POINTS, 2 * POINTS)
        scores = {grade.name: grade.score for notebook in graded.notebooks for grade in notebook.grades}
    assert scores == {"check_lmf_weight": POINTS, "check_best_additive_accuracy": 0}
