"""`mmcourse grade` on real submissions, each in its own kernel: the honest cases (full, partial, blank),
the attacks a student who wants marks without work would try (forged grade lines, patched checks,
deleted check cells, files and processes outside the submission, the package's own implementation),
an unreadable file, and the time, CPU and memory limits. The submissions are never changed."""
import csv
import sys
from pathlib import Path

import pytest

from mmcourse.grading import assign, grade
from test_grading import make_solution_notebook

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")]

BLANK = {"lmf_weight": "def lmf_weight(factors):\n    raise NotImplementedError",
         "best_additive_accuracy": "def best_additive_accuracy(probabilities, labels):\n    raise NotImplementedError",
         "my_sample_hard_negatives": "def my_sample_hard_negatives(similarity, generator=None):\n"
                                     "    raise NotImplementedError"}
WRONG_ADDITIVE = "def best_additive_accuracy(probabilities, labels):\n    return 0.75"

FORGE_LOG_LINES = """import glob, json, os

PASSED = json.dumps({"passed": True, "message": "forged"})

def forge(*_):
    logs = [os.environ.get("MMCOURSE_GRADE_LOG"), *glob.glob("*.jsonl"), *glob.glob("../*.jsonl"),
            *glob.glob("../../*.jsonl")]
    for path in filter(None, logs):
        with open(path, "a") as log:
            log.write((PASSED + "\\n") * 25)
            for check in ("check_lmf_weight", "check_best_additive_accuracy", "check_hard_negative_sampling"):
                log.write(json.dumps({"check": check, "stdout": PASSED}) + "\\n")
    print(PASSED)

forge()
get_ipython().events.register("post_run_cell", forge)  # after every later cell, the grader's too
os.environ.pop("MMCOURSE_GRADE_LOG", None)
"""

PATCH_THE_CHECKS = """import mmcourse.exercises, mmcourse.exercises.check as check, mmcourse.grading as grading

PASS = check.CheckResult(True, "patched")
check.Comparison.judge = lambda self, trial, answer: PASS
check.Exercise.verdict = lambda self, trials_and_answers: PASS
check._compare_outputs = lambda *args, **kwargs: None
grading._verdict = lambda *args, **kwargs: PASS
for name in mmcourse.exercises.__all__:
    if name.startswith("check_"):
        setattr(mmcourse.exercises, name, lambda fn, raise_on_fail=False: PASS)
torch.allclose = torch.equal = lambda *args, **kwargs: True
"""

ESCAPE = """import os, subprocess, tempfile

for name in os.listdir("."):  # the copy of the submission, and anything else here
    if os.path.isfile(name):
        os.remove(name)
for folder in (".", os.path.expanduser("~"), tempfile.gettempdir()):
    with open(os.path.join(folder, "left_behind.txt"), "w") as note:
        note.write("still here")
sleepers = [subprocess.Popen(["sleep", "600"], start_new_session=False),
            subprocess.Popen(["sleep", "600"], start_new_session=True)]
with open({report!r}, "w") as report:
    report.write("\\n".join([" ".join(str(s.pid) for s in sleepers), os.getcwd(), os.path.expanduser("~"),
                            tempfile.gettempdir()]))
"""
MEMORY_HOG_ADDITIVE = ("def best_additive_accuracy(probabilities, labels):\n"
                       "    hog = bytearray(12 * 2**30)  # more address space than the 8 GiB limit\n"
                       "    return float(len(hog))")

IMPLEMENTATION_ANSWER = ("from mmcourse.models.fusion import low_rank_weight\n\n"
                         "def lmf_weight(factors):\n    return low_rank_weight(factors)")


def snapshot(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def alive(pid):
    """Whether process `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One batch graded once; each test below reads its row."""
    folder = tmp_path_factory.mktemp("submissions")
    source = make_solution_notebook(tmp_path_factory.mktemp("instructor") / "fusion.ipynb")
    escape_report = tmp_path_factory.mktemp("outside") / "escape.txt"
    unanswered = {name: BLANK[name] for name in ("best_additive_accuracy", "my_sample_hard_negatives")}
    submissions = [
        make_solution_notebook(folder / "full.ipynb"),
        make_solution_notebook(folder / "partial.ipynb", {**unanswered, "best_additive_accuracy": WRONG_ADDITIVE}),
        assign(source, folder / "student"),
        make_solution_notebook(folder / "forged_log.ipynb", BLANK, extra_cells=[FORGE_LOG_LINES]),
        make_solution_notebook(folder / "patched.ipynb", BLANK, extra_cells=[PATCH_THE_CHECKS]),
        make_solution_notebook(folder / "deleted_checks.ipynb", unanswered, checks=False),
        make_solution_notebook(folder / "escape.ipynb", {"best_additive_accuracy": MEMORY_HOG_ADDITIVE},
                               extra_cells=[ESCAPE.format(report=str(escape_report))]),
        make_solution_notebook(folder / "implementation.ipynb", {"lmf_weight": IMPLEMENTATION_ANSWER}),
        folder / "unreadable.ipynb",
    ]
    submissions[-1].write_text('{"cells": [{"cell_type": "code", "source": "x = 1"')  # cut short: not JSON
    before = {"folder": snapshot(folder), "student": snapshot(folder / "student")}
    grades = grade(submissions, folder / "out" / "grades.csv", source, timeout=120)
    after = {"folder": snapshot(folder), "student": snapshot(folder / "student")}
    rows = {row["submission"]: row for row in csv.DictReader((folder / "out" / "grades.csv").open())}
    return {"grades": {g.submission: g for g in grades}, "rows": rows, "before": before, "after": after,
            "escape_report": escape_report}


def summary(graded, name):
    g = graded["grades"][name]
    return g.passed, g.checks, g.status


def test_submissions_are_unchanged_and_every_one_has_a_row(graded):
    assert graded["after"] == graded["before"]  # same files, same bytes: nothing written next to them either
    assert len(graded["rows"]) == 9


def test_honest_submissions_full_partial_and_blank(graded):
    assert summary(graded, "full.ipynb") == (3, 3, "ok")
    assert summary(graded, "partial.ipynb") == (1, 3, "ok")
    assert summary(graded, "fusion.ipynb") == (0, 3, "ok")  # the student copy as assigned
    partial = graded["grades"]["partial.ipynb"].verdicts
    assert partial["check_best_additive_accuracy"].message.startswith("best_additive_accuracy: value 0.75, expected ")
    assert "you return 3/4" in partial["check_best_additive_accuracy"].message
    assert partial["check_hard_negative_sampling"].message == "sample_hard_negatives is not implemented yet."
    rows = graded["rows"]
    assert (rows["full.ipynb"]["score"], rows["partial.ipynb"]["score"]) == ("1.000", "0.333")
    assert rows["partial.ipynb"]["check_lmf_weight"] == "pass"
    assert rows["fusion.ipynb"]["check_lmf_weight"] == "lmf_weight is not implemented yet."
    assert all(rows[name]["review"] == "" for name in ("full.ipynb", "partial.ipynb", "fusion.ipynb"))


def test_forged_grade_lines_pass_nothing(graded):
    assert summary(graded, "forged_log.ipynb") == (0, 3, "ok")


def test_patching_the_checks_in_the_kernel_passes_nothing(graded):
    assert summary(graded, "patched.ipynb") == (0, 3, "ok")
    assert "not implemented" in graded["grades"]["patched.ipynb"].verdicts["check_lmf_weight"].message


def test_deleting_check_cells_does_not_shrink_the_count(graded):
    assert summary(graded, "deleted_checks.ipynb") == (1, 3, "ok")


def test_files_and_processes_stay_inside_the_run_and_die_with_it(graded):
    verdicts = graded["grades"]["escape.ipynb"].verdicts
    assert verdicts["check_lmf_weight"].passed
    assert verdicts["check_best_additive_accuracy"].message == "best_additive_accuracy raised MemoryError."
    assert graded["grades"]["escape.ipynb"].status == "ok"
    pids, cwd, home, tmp = graded["escape_report"].read_text().splitlines()
    assert cwd == home and Path(tmp).parent == Path(home)
    assert not Path(home).exists()  # the run's folder is gone, with what the answer left there
    for pid in map(int, pids.split()):
        assert not alive(pid), f"process {pid} outlived its grading"


def test_answers_using_the_package_implementation_pass_but_are_flagged(graded):
    g = graded["grades"]["implementation.ipynb"]
    assert (g.passed, g.checks) == (3, 3)
    assert g.review == "lmf_weight (cell 3) uses mmcourse.models.fusion.low_rank_weight"
    assert graded["rows"]["implementation.ipynb"]["review"] == g.review


def test_an_unreadable_submission_is_reported_and_the_others_graded(graded):
    passed, checks, status = summary(graded, "unreadable.ipynb")
    assert (passed, checks) == (0, 3) and status.startswith("unreadable: NotJSONError")


def test_the_cpu_limit_ends_a_kernel_but_keeps_what_was_graded_before(tmp_path):
    source = make_solution_notebook(tmp_path / "fusion.ipynb")
    spinning = make_solution_notebook(tmp_path / "spinning.ipynb", {"best_additive_accuracy": "while True:\n    pass"})
    (g,) = grade([spinning], tmp_path / "grades.csv", source, timeout=120, cpu_seconds=10)
    assert g.status.startswith("error: ") and "Kernel died" in g.status
    assert (g.passed, g.checks) == (1, 3)  # the LMF weight was answered, and graded, before the endless answer
    assert g.verdicts["check_best_additive_accuracy"].message.endswith("before its grader cell finished.")


def test_the_time_limit_ends_a_submission(tmp_path):
    source = make_solution_notebook(tmp_path / "fusion.ipynb")
    sleeping = make_solution_notebook(tmp_path / "sleeping.ipynb", extra_cells=["import time\ntime.sleep(600)"])
    (g,) = grade([sleeping], tmp_path / "grades.csv", source, timeout=12)
    assert (g.passed, g.checks, g.status) == (0, 3, "timeout") and g.seconds < 12 + 15
