"""Publish a run of the course: every executed notebook as an HTML page, and an index of them.

`mmcourse run` writes `build/html/<notebook>.html` for every notebook it executed (nbconvert's
JupyterLab look, the figures embedded in the page as data, so the folder can be copied anywhere as
it is) and `build/html/index.html`, the course table: one row per notebook that has reported its
figures (`build/results/`), with its lecture section, scale, wall time and every headline figure,
the notebook's name linking to its page.

A published page names no folder of the machine that built it: where an output shows a path (the
source file of a warning, a traceback), the folders of this machine (the notebook's, the project's,
the working directory, the home folder, Python's) are cut from its front.
"""
from __future__ import annotations

import html
import os
import re
import sys
import sysconfig
from pathlib import Path
from urllib.parse import quote

from .results import format_seconds, format_value

# The lecture section of each notebook, in short; the README's notebook table has the long form.
SECTIONS = {
    "01_challenges": "motivation, heterogeneity, the five challenges, fusion",
    "02_representation": "representation: joint and coordinated spaces, CLIP, zero-shot, grounding",
    "03_alignment": "alignment: cross-modal attention, single and dual stream, noisy pairs",
    "04_reasoning": "reasoning: VQA, attention, bilinear pooling, neural module networks",
    "05_few_shot": "co-learning: zero-shot and few-shot, prototypical networks",
}

INDEX_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ccc; padding: 0.4rem 0.6rem; text-align: left; vertical-align: top; }
ul.figures { list-style: none; margin: 0; padding: 0; font-size: 0.9em; }
ul.figures code { margin-right: 0.4em; }
"""


def _output_folder(out_dir) -> Path:
    """`out_dir` as a folder, made when missing; ValueError when it, or a folder above it, is a file."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"out_dir={str(out_dir)!r} must name a folder (or a path where one can be made), "
                         "but it or a folder above it is a file") from None
    return folder


def _machine_folders(*extra: Path) -> list[str]:
    """The absolute folders of this machine that outputs may show, as prefixes ending in a separator,
    longest first (so a folder inside another is cut whole). The file system's root is never one."""
    python = [Path(sys.prefix), Path(sys.base_prefix), *map(Path, sysconfig.get_paths().values())]
    folders = [*extra, Path.cwd(), Path.home(), Path(__file__).resolve().parents[1], *python]
    prefixes = {str(path).rstrip(os.sep) + os.sep for folder in folders for path in (folder, folder.resolve())
                if path.is_absolute() and len(path.parts) > 1}
    return sorted(prefixes, key=len, reverse=True)


def _without_machine_folders(page: str, *extra: Path) -> str:
    """`page` with every machine folder cut from the front of the paths it shows. A folder counts only
    where no word character, '+' or '/' comes just before it, so base64 image data is never touched."""
    for prefix in _machine_folders(*extra):
        page = re.sub(r"(?<![\w+/])" + re.escape(prefix), "", page)
    return page


def notebook_html(executed_notebook, out_dir) -> Path:
    """Write `executed_notebook` as `<out_dir>/<its stem>.html`, figures embedded; return that path."""
    import nbformat
    from nbconvert import HTMLExporter

    source = Path(executed_notebook)
    if not source.is_file():
        raise FileNotFoundError(f"executed_notebook={str(executed_notebook)!r} is not a file")
    folder = _output_folder(out_dir)
    try:
        notebook = nbformat.read(source, as_version=4)
    except Exception as error:  # not JSON, not a notebook: nbformat raises many kinds
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"executed_notebook={str(executed_notebook)!r} is not a readable notebook: "
                         f"{type(error).__name__}: {reason}") from None
    exporter = HTMLExporter(template_name="lab")
    page, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": source.stem}})  # name: the title
    target = folder / f"{source.stem}.html"
    target.write_text(_without_machine_folders(page, source.parent), encoding="utf-8")
    return target


def _check_record(index: int, record) -> None:
    if not isinstance(record, dict):
        raise TypeError(f"results[{index}] must be a results record (dict), got {type(record).__name__}")
    missing = [key for key in ("notebook", "scale", "wall_time_s", "metrics") if key not in record]
    if missing:
        raise ValueError(f"results[{index}] lacks {missing}; a record has notebook, scale, wall_time_s and metrics")
    if not isinstance(record["notebook"], str) or not record["notebook"]:
        raise TypeError(f"results[{index}]['notebook'] must be a non-empty str, got {record['notebook']!r}")
    if not isinstance(record["metrics"], dict):
        raise TypeError(f"results[{index}]['metrics'] must be a dict, got {type(record['metrics']).__name__}")


def _index_row(record: dict, folder: Path) -> str:
    """One `<tr>` of the index; the notebook's name links to its page when that page was written."""
    name = record["notebook"]
    text = html.escape(name)
    if (folder / f"{name}.html").is_file():
        text = f'<a href="{html.escape(quote(name + ".html"))}">{text}</a>'
    figures = "".join(f"<li><code>{html.escape(key)}</code>{html.escape(format_value(value))}</li>"
                      for key, value in sorted(record["metrics"].items()))
    cells = [text, html.escape(SECTIONS.get(name, "")), html.escape(str(record["scale"])),
             html.escape(format_seconds(record["wall_time_s"])), f'<ul class="figures">{figures}</ul>']
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def write_index(results: list[dict], out_dir) -> Path:
    """Write `<out_dir>/index.html`: the course table, one row per results record (see
    `mmcourse.results.report`), each notebook's name linking to `<notebook>.html` beside it."""
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"results must be a list of results records, got {type(results).__name__}")
    for index, record in enumerate(results):
        _check_record(index, record)
    folder = _output_folder(out_dir)
    header = "".join(f"<th>{title}</th>" for title in
                     ("notebook", "lecture section", "scale", "wall time (s)", "headline figures"))
    rows = "\n".join(_index_row(record, folder) for record in results)
    body = (f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>" if results
            else "<p>No notebook has reported its headline figures yet.</p>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>mmcourse: the course</title>\n<style>{INDEX_STYLE}</style>\n</head>\n<body>\n"
            "<h1>mmcourse: multimodal machine learning, the course</h1>\n"
            f"{body}\n</body>\n</html>\n")
    target = folder / "index.html"
    target.write_text(page, encoding="utf-8")
    return target
