"""The `mmcourse` command: run the notebooks, draw the world, report the environment.

    mmcourse run [--scale auto|ci|cpu|gpu] [--only PATTERN] [--notebooks DIR] [--out DIR] [--no-html]
    mmcourse assign NOTEBOOK... --out DIR
    mmcourse grade --source SOLUTION.ipynb SUBMISSION... --out grades.csv [--timeout 600] [--cpu-seconds N]
                   [--memory-gb 8]
    mmcourse world --out sheet.png [--n 12] [--seed 0] [--preset default]
    mmcourse env
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .config import PROGRESS_ENV
from .paths import RESULTS_ENV, project_root
from .results import format_summary, load_results


def run_notebook(source: Path, output: Path, scale: str, seed: int, results: Path,
                 cell_timeout: int | None = None) -> float:
    """Execute one notebook with papermill (parameters SCALE and SEED); return its wall time."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{source.stem}.json").unlink(missing_ok=True)  # never show a stale figure
    os.environ[RESULTS_ENV] = str(results.resolve())  # the kernel works in the notebook's folder
    os.environ.setdefault("MPLBACKEND", "Agg")
    progress = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "0"  # no front end: a progress bar would be stored frozen at 0%
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(output), parameters={"SCALE": scale, "SEED": seed},
                                   cwd=str(source.parent), kernel_name="python3", language="python",
                                   progress_bar=False, execution_timeout=cell_timeout)
    finally:
        if progress is None:
            os.environ.pop(PROGRESS_ENV)
        else:
            os.environ[PROGRESS_ENV] = progress
    return time.perf_counter() - started


def shown(path: Path) -> str:
    """`path` relative to the working directory where it lies below it, else as it is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def publish_html(executed: list[Path], results: Path, html: Path) -> Path:
    """Write every notebook of `executed` that exists as a page in `html`, then the index of every
    record in `results`; return the index."""
    from .publish import notebook_html, write_index

    for notebook in executed:
        if notebook.is_file():
            notebook_html(notebook, html)
    return write_index(load_results(results), html)


def cmd_run(args) -> int:
    root = project_root()
    if args.notebooks is None and not (root / "notebooks").is_dir():
        print(f"no course folder (one holding pyproject.toml and notebooks/) was found in {Path.cwd()} or above it; "
              "run mmcourse from the course folder, or pass --notebooks DIR (and --out DIR)", file=sys.stderr)
        return 2
    notebooks = sorted(Path(args.notebooks or root / "notebooks").glob(f"{args.only}.ipynb"))
    out = Path(args.out or root / "build")
    results = out / "results"
    if not notebooks:
        print(f"no notebooks match {args.only!r} in {args.notebooks or 'notebooks/'}; nothing to run")
        return 0
    failed = []
    for notebook in notebooks:
        print(f"running {notebook.name} at scale {args.scale} ...", flush=True)
        try:
            seconds = run_notebook(notebook, out / "notebooks" / notebook.name, args.scale, args.seed, results)
            print(f"  done in {seconds:.0f} s", flush=True)
        except Exception as error:  # report every notebook, then fail
            failed.append(notebook.name)
            print(f"  FAILED: {type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}")
    records = [r for r in load_results(results) if f"{r['notebook']}.ipynb" in {n.name for n in notebooks}]
    print()
    print(format_summary(records) if records else "no headline figures were reported")
    full_list = [f"{shown(results)}/<notebook>.json"] if records else []
    if args.html:
        full_list.append(shown(publish_html([out / "notebooks" / n.name for n in notebooks], results, out / "html")))
    if full_list:
        print(f"full list: {' and '.join(full_list)}")
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: {', '.join(failed)} (executed copies in {out / 'notebooks'})")
        return 1
    return 0


def cmd_assign(args) -> int:
    from .grading import assign

    for notebook in args.notebooks:
        print(f"wrote {assign(Path(notebook), Path(args.out))}")
    return 0


def cmd_grade(args) -> int:
    from .grading import grade

    grades = grade([Path(s) for s in args.submissions], Path(args.out), Path(args.source), timeout=args.timeout,
                   cpu_seconds=args.cpu_seconds, memory_gb=args.memory_gb)
    width = max(len(g.submission) for g in grades)
    for g in grades:
        print(f"{g.submission.ljust(width)}  {g.passed}/{g.checks} checks passed  ({g.status}, {g.seconds:.0f} s)")
        if g.review:
            print(f"{' ' * width}  review: {g.review}")
    print(f"wrote {args.out}")
    return 0


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_world(args) -> int:
    from .viz import contact_sheet

    contact_sheet(args.n, args.seed, path=args.out, preset=args.preset)
    print(f"wrote {args.out}")
    return 0


def cmd_env(args) -> int:
    from .device import env_report

    report = env_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key.ljust(width)}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcourse", description="The mmcourse command line.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute every notebook with papermill into build/, write its HTML pages "
                                          "and print the figures")
    run.add_argument("--scale", default="auto", choices=["auto", "ci", "cpu", "gpu"])
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--only", default="*", help="glob on notebook names, e.g. '01_*'")
    run.add_argument("--notebooks", help="folder of notebooks (default: notebooks/ of the project)")
    run.add_argument("--out", help="output folder (default: build/ of the project)")
    run.add_argument("--no-html", dest="html", action="store_false",
                     help="skip the HTML pages and index under OUT/html/")
    run.set_defaults(handler=cmd_run)

    assign = commands.add_parser("assign", help="write student copies: solutions removed, outputs cleared")
    assign.add_argument("notebooks", nargs="+")
    assign.add_argument("--out", required=True, help="folder for the student copies")
    assign.set_defaults(handler=cmd_assign)

    grade = commands.add_parser("grade", help="grade submissions on the exercises of a solution notebook")
    grade.add_argument("submissions", nargs="+")
    grade.add_argument("--source", required=True, help="the instructor's solution notebook: its checks are the test")
    grade.add_argument("--out", default="grades.csv", help="CSV file to write")
    grade.add_argument("--timeout", type=positive_int, default=600, help="seconds allowed per submission")
    grade.add_argument("--cpu-seconds", type=positive_int, help="CPU seconds per process (default: the timeout)")
    grade.add_argument("--memory-gb", type=positive_int, default=8, help="address space per process, GiB")
    grade.set_defaults(handler=cmd_grade)

    world = commands.add_parser("world", help="render a contact sheet of scenes with captions and questions")
    world.add_argument("--out", required=True, help="PNG file to write")
    world.add_argument("--n", type=int, default=12)
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--preset", default="default")
    world.set_defaults(handler=cmd_world)

    env = commands.add_parser("env", help="print versions and devices")
    env.set_defaults(handler=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
