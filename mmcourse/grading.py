"""Hand out and grade the notebooks' exercises.

`assign` writes student copies of solution notebooks: every answer between `### BEGIN SOLUTION` and
`### END SOLUTION` (nbgrader's markers) becomes nbgrader's stub (`# YOUR CODE HERE` and
`raise NotImplementedError()`), and outputs are cleared: the code cells come out exactly as nbgrader's
`generate_assignment` writes them.

nbgrader interoperability: the solution and check cells of the notebooks carry nbgrader's cell
metadata (`nbgrader_metadata`: a solution cell per answer, an autograded test cell worth one point per
check, stable grade ids named after the check), so an instructor who runs nbgrader can put the
notebooks in its `source/` folder as they are. Its autograder passes a test cell that raises nothing;
with MMCOURSE_CHECKS_RAISE=1 in its environment a failed check raises (`mmcourse.exercises.check`).

`grade` takes the exercises from the instructor's solution notebook (its check cells calling
`mmcourse.exercises.check_<name>(my_function)`), never from a submission: like nbgrader, the grader
brings its own tests. For each submission it

1. draws every exercise's inputs from a fresh random seed and computes the reference's values, here;
2. executes the submission's cells in a kernel at ci scale, with one grader's cell after each
   exercise's answer: that cell calls the student's function on the inputs drawn here and prints
   what it returned (`mmcourse.exercises.check.answer_for_grader`: base64 between the markers of a
   per-run nonce), and decides nothing;
3. judges those values here with the exercise's own `judge` (`mmcourse.exercises.check.Exercise`).

So nothing a submission does in its kernel (writing logs, patching the checks, deleting check cells)
can make a check pass except returning the right values; the count of checks is the source's. The
kernel runs without GPUs in a fresh temporary folder (its working directory and HOME, holding a copy
of the submission) under CPU-time and memory limits, and no process of it outlives its grading: the
kernel's process group, its driver's and (on Linux) every process carrying the run's mark are killed.
Answer cells that use the package's own implementation (`mmcourse.models`, `.exercises`, `.metrics`,
`.experiments`, `.grading`) are named in the `review` column for a person to look at. Submissions are
only read.
"""
from __future__ import annotations

import ast
import base64
import csv
import io
import json
import os
import re
import resource
import secrets
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .exercises import alignment, challenges, few_shot, reasoning, representation
from .exercises.check import RAISE_ENV, CheckResult, Exercise, Trial, encode
from .paths import CACHE_ENV, RESULTS_ENV
from .world.scene import check_count

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader's ClearSolutions stub for Python
NBGRADER_CELL = {"grade": False, "locked": False, "schema_version": 3, "solution": False, "task": False}
POINTS = 1  # per check cell, in nbgrader's gradebook
CHECK_CALL = re.compile(r"(?<!def )\bcheck_\w+\s*\(")  # a call, not a definition
_SOLUTION = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*(\n|$)", re.M | re.S)

EXERCISES: dict[str, Exercise] = {**challenges.EXERCISES, **representation.EXERCISES, **alignment.EXERCISES,
                                  **reasoning.EXERCISES, **few_shot.EXERCISES}
IMPLEMENTATION = ("mmcourse.models", "mmcourse.exercises", "mmcourse.metrics", "mmcourse.experiments",
                  "mmcourse.grading")  # where the references live
GRADER_CELL = "mmcourse_grader"  # metadata key of the grader's cells: the check they answer
RUN_MARK_ENV = "MMCOURSE_GRADE_RUN"  # every process of a grading run inherits this, with the run's token
MAX_REPLY_BYTES = 32 * 2**20  # a grader cell's stdout beyond this is not kept (that exercise fails)
MAX_ANSWERS_BYTES = 512 * 2**20  # an answers file beyond this (written to by the kernel) is not read
STOP_SECONDS = 10  # how long a driver stopped at the time limit gets to shut its kernel down


def strip_solutions(source: str, where: str = "cell") -> str:
    """`source` with each marked solution replaced by `STUB`, each line at its BEGIN line's indentation
    (line by line, as nbgrader's ClearSolutions does)."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"{where} has {source.count(BEGIN)} '{BEGIN}' but {source.count(END)} '{END}' markers")
    kept, in_solution = [], False
    for line in source.split("\n"):
        if BEGIN in line:
            indent = line[:len(line) - len(line.lstrip())]
            kept += [indent + stub_line for stub_line in STUB.split("\n")]
            in_solution = True
        elif END in line:
            in_solution = False
        elif not in_solution:
            kept.append(line)
    return "\n".join(kept)


def nbgrader_metadata(notebook, where: str = "notebook") -> dict[int, dict]:
    """nbgrader's cell metadata for the exercise cells of a solution `notebook`: {cell index: metadata}.

    Each check cell is an autograded test cell worth `POINTS` with grade id `check_<name>`; the cell
    holding the answer it checks (the one that defines the learner's function between the solution
    markers) is a solution cell with grade id `answer_<name>`.
    """
    trees = _code_trees(notebook)
    metadata = {}
    for index, tree in trees.items():
        for check, call in _check_calls(tree):
            name = check.removeprefix("check_")
            metadata[index] = {**NBGRADER_CELL, "grade": True, "grade_id": check, "locked": True, "points": POINTS}
            function = call.args[0].id if call.args and isinstance(call.args[0], ast.Name) else None
            answers = [i for i, t in trees.items() if i < index and BEGIN in notebook.cells[i].source
                       and function is not None and _binds(t, function)]
            if not answers:
                raise ValueError(f"{where} cell {index} calls {check}({function}), but no earlier cell defines "
                                 f"{function} between '{BEGIN}' and '{END}'")
            metadata[answers[-1]] = {**NBGRADER_CELL, "grade_id": f"answer_{name}", "solution": True}
    return metadata


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


# ------------------------------------------------------------------------------- the source's exercises


@dataclass(frozen=True)
class Task:
    """One exercise of the source notebook: the check its check cell calls, the name of the learner's
    function that cell passes, and the `Exercise` behind the check."""

    check: str  # "check_tensor_fusion"
    function: str  # "tensor_fusion"
    exercise: Exercise


def read_exercises(source: Path) -> list[Task]:
    """The exercises of the solution notebook `source`, in its order, from its check cells."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"source notebook {source} does not exist")
    tasks: dict[str, Task] = {}
    for index, cell in enumerate(nbformat.read(source, as_version=4).cells):
        if cell.cell_type != "code" or not CHECK_CALL.search(cell.source):
            continue
        where = f"source notebook {source.name} cell {index}"
        tree = _syntax_tree(cell.source)
        if tree is None:
            raise ValueError(f"{where} calls a check but is not valid Python")
        for check, call in _check_calls(tree):
            if check not in EXERCISES:
                raise ValueError(f"{where} calls {check}, which is not an exercise check of mmcourse.exercises "
                                 f"(known: {', '.join(sorted(EXERCISES))})")
            if not call.args or not isinstance(call.args[0], ast.Name):
                raise ValueError(f"{where} must pass the learner's function by its name: {check}(my_function)")
            tasks.setdefault(check, Task(check, call.args[0].id, EXERCISES[check]))
    if not tasks:
        raise ValueError(f"source notebook {source} has no check cell (a call of mmcourse.exercises.check_<name>)")
    return list(tasks.values())


def _check_calls(tree: ast.AST):
    """(check name, call) for every call of a `check_<name>` function in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name.startswith("check_"):
                yield name, node


def _syntax_tree(source: str) -> ast.Module | None:
    """A code cell as Python (IPython's magics turned into calls), or None when it does not parse."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return None


def _code_trees(notebook) -> dict[int, ast.Module]:
    """The syntax tree of every code cell that parses, by cell index."""
    trees = {i: _syntax_tree(cell.source) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    return {i: tree for i, tree in trees.items() if tree is not None}


def _binds(tree: ast.AST, name: str) -> bool:
    """Whether `tree` defines, assigns or imports `name`."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
            return True
    return False


# ------------------------------------------------------------------------------------------ the review


def review(notebook, tasks: list[Task]) -> str:
    """The answer cells (those defining an exercise's function) that use the package's own
    implementation, e.g. "late_fusion (cell 5) uses mmcourse.models.fusion.average_logits"; "" if none.

    A flag for a person to look at, read from the code: an answer can hide such a use (a helper in
    another cell, an import built from strings) and one that uses it legitimately is named too."""
    trees = _code_trees(notebook)
    aliases = _imported_names(trees.values())
    notes = []
    for task in tasks:
        for index, tree in trees.items():
            uses = _implementation_uses(tree, aliases) if _binds(tree, task.function) else []
            if uses:
                notes.append(f"{task.function} (cell {index}) uses {', '.join(uses)}")
    return "; ".join(notes)


def _imported_names(trees) -> dict[str, str]:
    """What the names imported anywhere in a notebook stand for: {"F": "torch.nn.functional", ...}."""
    names = {"mmcourse": "mmcourse"}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):  # `import a.b as c` binds c to a.b; `import a.b` binds a
                names.update({alias.asname or alias.name.split(".")[0]: alias.name if alias.asname
                              else alias.name.split(".")[0] for alias in node.names})
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.update({alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names})
    return names


def _implementation_uses(tree: ast.AST, aliases: dict[str, str]) -> list[str]:
    """The package implementation that `tree` names: through imported names, imports, or strings."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)):
            root, _, rest = _dotted(node).partition(".")
            used.add(".".join(filter(None, [aliases.get(root, root), rest])))
        elif isinstance(node, ast.Import):
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            used.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            used.add(node.value)  # __import__("mmcourse.models.fusion") and its like
    found = {name for name in used if any(name == p or name.startswith(p + ".") for p in IMPLEMENTATION)}
    return sorted(name for name in found if not any(other.startswith(name + ".") for other in found))


def _dotted(node: ast.AST) -> str:
    """'a.b.c' for a chain of attributes on a name; '' for anything else (a call's result ...)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


# ------------------------------------------------------------------------------------ the grader's cells


def _decode_reply(stdout: str, nonce: str) -> dict:
    """What a grader's cell printed, read back without running any of its code (torch's weights-only
    loader: tensors, numpy arrays, numbers, strings and containers of them)."""
    import numpy as np
    import torch

    match = re.search(f"{nonce}([A-Za-z0-9+/=]*){nonce}", stdout)
    if match is None:
        raise LookupError("no answer between the run's markers")
    numeric_dtypes = [type(np.dtype(code)) for code in "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]]
    rebuilders = [np.zeros(1).__reduce__()[0], np.float64(0).__reduce__()[0]]  # of arrays, of scalars
    with torch.serialization.safe_globals([np.ndarray, np.dtype, *rebuilders, *numeric_dtypes]):
        reply = torch.load(io.BytesIO(base64.b64decode(match.group(1))), map_location="cpu", weights_only=True)
    if not isinstance(reply, dict):
        raise TypeError(f"the reply is {type(reply).__name__}, not a dict")
    return reply


def _grader_cell(task: Task, trials: list[Trial], nonce: str):
    question = encode({"answer": task.exercise.answer, "requests": [trial.request for trial in trials]})
    source = (f'__import__("mmcourse.exercises.check", fromlist=["answer_for_grader"]).answer_for_grader(\n'
              f'    globals().get({task.function!r}), {question!r}, {nonce!r})')
    return nbformat.v4.new_code_cell(source, metadata={GRADER_CELL: task.check})


def _with_grader_cells(notebook, asked: list[tuple[Task, list[Trial]]], nonce: str):
    """`notebook` with each exercise's grader cell after the last cell defining its function (at the
    end when none does), so that an answer that loops costs only the exercises after it."""
    trees = _code_trees(notebook)
    last = len(notebook.cells) - 1
    after = {task.check: max((i for i, tree in trees.items() if _binds(tree, task.function)), default=last)
             for task, _ in asked}
    cells = []
    for index in range(-1, len(notebook.cells)):
        if index >= 0:
            cells.append(notebook.cells[index])
        cells.extend(_grader_cell(task, trials, nonce) for task, trials in asked if after[task.check] == index)
    prepared = nbformat.v4.new_notebook(metadata=notebook.metadata)
    prepared.cells = cells
    return prepared


def _verdict(task: Task, trials: list[Trial], stdout: str | None, nonce: str) -> CheckResult:
    """The verdict on what the grader's cell of `task` printed, judged here by the exercise."""
    if stdout is None:
        return CheckResult(False, f"{task.function}: not graded, the run stopped before its grader cell finished.")
    try:
        reply = _decode_reply(stdout, nonce)
        if reply.get("not_callable") == "NoneType":
            return CheckResult(False, f"{task.function} is not defined.")
        if "not_callable" in reply:
            kind = str(reply["not_callable"])
            article = "an" if kind[:1] in "aeiou" else "a"
            return CheckResult(False, f"{task.function} is {article} {kind}, not a function.")
        answers = list(reply["answers"])
        if len(answers) != len(trials):
            raise ValueError(f"{len(answers)} answers for {len(trials)} trials")
        return task.exercise.verdict(zip(trials, answers))
    except Exception as error:  # whatever came back from the kernel, nothing unreadable passes
        return CheckResult(False, f"{task.function}: no readable answer came back ({type(error).__name__}: "
                                  f"{str(error)[:200]}).")


# ------------------------------------------------------------------------------------ running a kernel


@dataclass(frozen=True)
class Limits:
    """What one submission may use: wall-clock seconds in all, CPU seconds and address space per process."""

    seconds: int
    cpu_seconds: int
    memory_bytes: int


def _run_kernel(notebook, submission: Path, run: Path, limits: Limits, scale: str) -> tuple[str, dict[str, str]]:
    """Execute `notebook` in a driver process and its kernel, in the fresh folder `run/home`, under
    `limits`; kill every process of the run afterwards. Return the status ("ok", "timeout" or
    "error: ...") and the stdout of each grader cell that finished, by check name."""
    home = run / "home"
    (home / "tmp").mkdir(parents=True)
    shutil.copy2(submission, home / submission.name)
    prepared, answers, log = run / "prepared.ipynb", run / "answers.jsonl", run / "driver.log"
    nbformat.write(notebook, prepared)
    token = secrets.token_hex(16)
    command = [sys.executable, "-m", "mmcourse.grading", str(prepared), str(answers), str(limits.cpu_seconds),
               str(limits.memory_bytes)]
    with log.open("w") as stderr:
        driver = subprocess.Popen(command, cwd=home, env=_environment(home, token, scale), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            driver.wait(timeout=limits.seconds)
            status = "ok" if driver.returncode == 0 else f"error: {_last_line(log)}"
        except subprocess.TimeoutExpired:
            status = "timeout"
            driver.terminate()  # the driver kills its kernel's process group on its way out
            with suppress(subprocess.TimeoutExpired):
                driver.wait(timeout=STOP_SECONDS)
        finally:
            _kill_group(driver.pid)  # the driver's session: it and whatever it started there
            _kill_marked(token)
            driver.wait()
    return status, _grader_outputs(answers)


def _environment(home: Path, token: str, scale: str) -> dict[str, str]:
    """The driver's and kernel's environment: HOME and TMPDIR in the run's folder, ci scale, one CPU
    thread (tiny models run many times faster so, on a busy machine, and CPU time is wall time), no
    GPU (the address-space limit and CUDA do not mix), this package first on the path, the run's mark."""
    env = {key: value for key, value in os.environ.items() if key not in (RESULTS_ENV, CACHE_ENV)}
    package_root = str(Path(__file__).resolve().parents[1])
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"), MMCOURSE_SCALE=scale, MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", PYTHONUSERBASE=site.getuserbase(),  # the user's packages despite HOME
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
               **{RUN_MARK_ENV: token, RAISE_ENV: "0"})  # the verdicts are judged here, not in the kernel
    return env


def _last_line(log: Path) -> str:
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 4096))
        lines = handle.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "?"


def _kill_group(group: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _kill_marked(token: str) -> None:
    """Kill every process whose environment carries the run's mark, also those that left its process
    groups (a new session); repeated while it finds some, against forks. Linux only (/proc)."""
    mark = f"{RUN_MARK_ENV}={token}".encode()
    for _ in range(10):
        found = False
        for environ in Path("/proc").glob("[0-9]*/environ"):
            with suppress(OSError, ValueError):  # gone already, or not ours to read
                if mark in environ.read_bytes().split(b"\0"):
                    os.kill(int(environ.parent.name), signal.SIGKILL)
                    found = True
        if not found:
            return


def _grader_outputs(answers: Path) -> dict[str, str]:
    """The stdout of each grader cell by check name, as the driver appended them (the first line for a
    check counts; lines that are not the driver's JSON are skipped)."""
    if not answers.is_file() or answers.stat().st_size > MAX_ANSWERS_BYTES:
        return {}
    outputs: dict[str, str] = {}
    for line in answers.read_text(errors="replace").splitlines():
        with suppress(ValueError, TypeError, KeyError):
            record = json.loads(line)
            outputs.setdefault(str(record["check"]), str(record["stdout"]))
    return outputs


def _drive(prepared: Path, answers: Path, cpu_seconds: int, memory_bytes: int) -> None:
    """The driver process: under the limits, execute `prepared` in a kernel (carrying on past errors,
    so that a bug in one answer costs only its exercise), append each grader cell's stdout to
    `answers` as it finishes, and kill the kernel's process group whatever happens."""
    from nbclient import NotebookClient

    _limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)  # SIGXCPU, then SIGKILL a second later
    _limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped at the time limit"))
    kernel_groups = []

    def save_answer(cell, **_):
        if GRADER_CELL in cell.metadata:
            stdout = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
            stdout = stdout if len(stdout) <= MAX_REPLY_BYTES else ""
            with answers.open("a") as handle:
                handle.write(json.dumps({"check": cell.metadata[GRADER_CELL], "stdout": stdout}) + "\n")

    client = NotebookClient(nbformat.read(prepared, as_version=4), timeout=None, kernel_name="python3",
                            allow_errors=True, resources={"metadata": {"path": os.getcwd()}},
                            on_notebook_start=lambda **_: kernel_groups.append(client.km.provisioner.pgid),
                            on_cell_executed=save_answer)
    try:
        client.execute()
    finally:
        for group in kernel_groups:
            _kill_group(group)


def _limit(kind: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(kind)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(kind, (soft, hard))


# ---------------------------------------------------------------------------------------------- grading


@dataclass
class Grade:
    """One submission's grade: each check's verdict, how its run ended, what to review, how long it took."""

    submission: str
    verdicts: dict[str, CheckResult]  # by check name, in the source's order
    status: str  # "ok", "timeout", "error: ..." or "unreadable: ..."
    review: str  # answers that use the package's own implementation, for a person to look at
    seconds: float

    @property
    def passed(self) -> int:
        return sum(result.passed for result in self.verdicts.values())

    @property
    def checks(self) -> int:
        return len(self.verdicts)

    @property
    def score(self) -> float:
        return self.passed / self.checks if self.checks else 0.0


def grade_one(submission: Path, tasks: list[Task], limits: Limits, scale: str = "ci") -> Grade:
    """Grade `submission` on the source's `tasks`: run it in a kernel, judge the values here."""
    submission = Path(submission)
    started = time.perf_counter()
    try:
        notebook = nbformat.read(submission, as_version=4)
        nbformat.validate(notebook)
    except Exception as error:  # not a notebook, whatever the reason: this row says so, the batch goes on
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        verdicts = {task.check: CheckResult(False, "not graded: the submission could not be read.") for task in tasks}
        return Grade(submission.name, verdicts, f"unreadable: {type(error).__name__}: {reason}", "", 0.0)
    asked = [(task, list(task.exercise.draw(secrets.randbelow(2**31)))) for task in tasks]
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="mmcourse-grade-") as run:
        status, outputs = _run_kernel(_with_grader_cells(notebook, asked, nonce), submission, Path(run), limits, scale)
    verdicts = {task.check: _verdict(task, trials, outputs.get(task.check), nonce) for task, trials in asked}
    return Grade(submission.name, verdicts, status, review(notebook, tasks), round(time.perf_counter() - started, 1))


def grade(submissions: list[Path], out_csv: Path, source: Path, timeout: int = 600, scale: str = "ci",
          cpu_seconds: int | None = None, memory_gb: int = 8) -> list[Grade]:
    """Grade every submission on the exercises of the solution notebook `source` and write one CSV row
    each: submission, passed, checks, score, status, review, seconds, then each check's verdict.

    `timeout` bounds each submission's wall-clock time; `cpu_seconds` (default: `timeout`; its kernel
    runs one thread) and `memory_gb` (address space) bound each of its processes."""
    timeout = check_count("timeout", timeout, 1)
    cpu_seconds = check_count("cpu_seconds", timeout if cpu_seconds is None else cpu_seconds, 1)
    limits = Limits(timeout, cpu_seconds, check_count("memory_gb", memory_gb, 1) * 2**30)
    tasks = read_exercises(source)
    grades = [grade_one(Path(s), tasks, limits, scale) for s in submissions]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as handle:
        columns = ["submission", "passed", "checks", "score", "status", "review", "seconds"]
        writer = csv.DictWriter(handle, fieldnames=columns + [task.check for task in tasks])
        writer.writeheader()
        for g in grades:
            checks = {name: "pass" if result.passed else result.message for name, result in g.verdicts.items()}
            writer.writerow({"submission": g.submission, "passed": g.passed, "checks": g.checks,
                             "score": f"{g.score:.3f}", "status": g.status, "review": g.review,
                             "seconds": g.seconds, **checks})
    return grades


if __name__ == "__main__":  # the driver process of _run_kernel: PREPARED ANSWERS CPU_SECONDS MEMORY_BYTES
    _drive(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
