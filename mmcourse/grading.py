"""Hand out and grade the notebooks' exercises.

`assign` writes student copies of solution notebooks: every answer between `### BEGIN SOLUTION` and
`### END SOLUTION` (nbgrader's markers) becomes `raise NotImplementedError`, and outputs are cleared.
`grade` executes submitted notebooks, each in a copy, in a separate kernel at ci scale with a time
limit, and counts the exercise checks that passed; the submissions themselves are never touched.
Checks report to the grader through the file named by MMCOURSE_GRADE_LOG (one JSON line each).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

from .exercises.check import GRADE_LOG_ENV

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_CALL = re.compile(r"(?<!def )\bcheck_\w+\s*\(")  # a call, not a definition
_SOLUTION = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*(\n|$)", re.M | re.S)


def strip_solutions(source: str, where: str = "cell") -> str:
    """`source` with each marked solution replaced by `raise NotImplementedError` at its indentation."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"{where} has {source.count(BEGIN)} '{BEGIN}' but {source.count(END)} '{END}' markers")
    return _SOLUTION.sub(lambda m: f"{m.group(1)}raise NotImplementedError\n", source)


def assign(source: Path, out_dir: Path) -> Path:
    """Write the student copy of notebook `source` into `out_dir`; return its path."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_file():
        raise FileNotFoundError(f"source notebook {source} does not exist")
    target = out_dir / source.name
    if target.resolve() == source.resolve():
        raise ValueError(f"out_dir {out_dir} would overwrite the solution notebook {source}")
    notebook = nbformat.read(source, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, f"{source.name} cell {index}")
            cell.outputs, cell.execution_count = [], None
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)
    return target


@dataclass
class Grade:
    submission: str
    passed: int
    checks: int
    status: str  # "ok", "timeout" or "error: ..."
    seconds: float

    @property
    def score(self) -> float:
        return self.passed / self.checks if self.checks else 0.0


def count_check_cells(notebook_path: Path) -> int:
    notebook = nbformat.read(notebook_path, as_version=4)
    return sum(1 for cell in notebook.cells if cell.cell_type == "code" and CHECK_CALL.search(cell.source))


def _execute(notebook_path: Path, cell_timeout: int) -> None:
    """Run every cell of `notebook_path` in place, carrying on past errors (a student's bug in one
    exercise must not cost the others)."""
    from nbclient import NotebookClient

    notebook = nbformat.read(notebook_path, as_version=4)
    client = NotebookClient(notebook, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(notebook_path.parent)}})
    client.execute()
    nbformat.write(notebook, notebook_path)


def grade_one(submission: Path, timeout: int = 600, scale: str = "ci") -> Grade:
    """Execute a copy of `submission` and count the checks that passed."""
    submission = Path(submission)
    checks = count_check_cells(submission)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        copy = Path(work) / submission.name
        shutil.copy2(submission, copy)
        log = Path(work) / "checks.jsonl"
        env = dict(os.environ, MMCOURSE_SCALE=scale, MPLBACKEND="Agg", **{GRADE_LOG_ENV: str(log)})
        command = [sys.executable, "-m", "mmcourse.grading", str(copy), str(timeout)]
        process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=timeout)
            status = "ok" if process.returncode == 0 else f"error: {(stderr.strip().splitlines() or ['?'])[-1]}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the kernel too: it lives in the same session
            process.communicate()
            status = "timeout"
        results = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    passed = sum(1 for result in results if result["passed"])
    return Grade(submission.name, passed, max(checks, len(results)), status, round(time.perf_counter() - started, 1))


def grade(submissions: list[Path], out_csv: Path, timeout: int = 600, scale: str = "ci") -> list[Grade]:
    """Grade every submission and write one CSV row each (submission, passed, checks, score, ...)."""
    grades = [grade_one(Path(s), timeout, scale) for s in submissions]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["submission", "passed", "checks", "score", "status", "seconds"])
        writer.writeheader()
        for g in grades:
            writer.writerow({**asdict(g), "score": f"{g.score:.3f}"})
    return grades


if __name__ == "__main__":  # the child process of grade_one: python -m mmcourse.grading NOTEBOOK CELL_TIMEOUT
    _execute(Path(sys.argv[1]), int(sys.argv[2]))
