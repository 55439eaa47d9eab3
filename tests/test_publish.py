"""Publishing a run: notebook pages, the course index, and the compact table `mmcourse run` prints."""
import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from mmcourse import cli, publish, results

ROOT = Path(__file__).resolve().parents[1]
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")  # 1x1 pixel


def write_executed_notebook(path: Path) -> Path:
    """A small notebook as papermill leaves it: a figure, a warning naming a file of this machine."""
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plot()", execution_count=1)
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure size 640x480>"}),
        nbformat.v4.new_output("stream", name="stderr", text=f"{path.parent / 'helper.py'}:3: UserWarning: slow\n"),
        nbformat.v4.new_output("stream", name="stdout", text=f"cache in {Path.cwd() / 'data' / 'cache'}\n"),
    ]
    notebook.cells = [nbformat.v4.new_markdown_cell("# Fusion"), cell]
    notebook.metadata["papermill"] = {"input_path": str(path), "output_path": str(path)}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def record(notebook: str, metrics: dict, scale: str = "ci", wall_time_s: float | None = 3.24) -> dict:
    return {"notebook": notebook, "scale": scale, "seed": 0, "device": "cpu", "wall_time_s": wall_time_s,
            "metrics": metrics}


# --- notebook pages ------------------------------------------------------------------------------

def test_notebook_html_embeds_the_figures_and_names_no_folder_of_this_machine(tmp_path):
    source = write_executed_notebook(tmp_path / "executed" / "01_challenges.ipynb")
    page_path = publish.notebook_html(source, tmp_path / "html")
    assert page_path == tmp_path / "html" / "01_challenges.html"
    page = page_path.read_text(encoding="utf-8")
    assert f"data:image/png;base64,{PNG}" in page and "Fusion" in page
    assert "<title>01_challenges</title>" in page
    assert "helper.py:3: UserWarning: slow" in page and "cache in data/cache" in page
    for folder in (tmp_path, Path.cwd(), Path.home()):
        assert f"{folder}/" not in page


def test_notebook_html_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="executed_notebook="):
        publish.notebook_html(tmp_path / "missing.ipynb", tmp_path / "html")
    (tmp_path / "broken.ipynb").write_text("{ not json")
    with pytest.raises(ValueError, match="executed_notebook=.*not a readable notebook"):
        publish.notebook_html(tmp_path / "broken.ipynb", tmp_path / "html")
    source = write_executed_notebook(tmp_path / "nb.ipynb")
    (tmp_path / "a_file").write_text("")
    for out_dir in (tmp_path / "a_file", tmp_path / "a_file" / "html"):
        with pytest.raises(ValueError, match="out_dir=.*is a file"):
            publish.notebook_html(source, out_dir)


# --- the index -----------------------------------------------------------------------------------

def test_write_index_links_every_notebook_to_its_page_and_lists_its_figures(tmp_path):
    records = [record("01_challenges", {"late_fusion_accuracy": 0.51234, "tfn_accuracy": 0.9}),
               record("02_representation", {"clip_r1": 0.7}, scale="cpu", wall_time_s=None)]
    for r in records:
        (tmp_path / f"{r['notebook']}.html").write_text("<html></html>")
    page = publish.write_index(records, tmp_path).read_text(encoding="utf-8")
    assert page.count("<tr>") == 1 + len(records)  # the header, then one row per notebook
    assert '<a href="01_challenges.html">01_challenges</a>' in page
    assert '<a href="02_representation.html">02_representation</a>' in page
    assert publish.SECTIONS["01_challenges"] in page and publish.SECTIONS["02_representation"] in page
    assert "<code>late_fusion_accuracy</code>0.5123" in page and "<code>clip_r1</code>0.7" in page
    assert re.search(r"<td>ci</td><td>3</td>", page) and re.search(r"<td>cpu</td><td>-</td>", page)


def test_write_index_escapes_names_and_values_and_links_only_written_pages(tmp_path):
    name = "<script>alert('x')</script> & co"
    page = publish.write_index([record(name, {"a<b>": 1})], tmp_path).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert "<code>a&lt;b&gt;</code>1" in page
    assert "<a href" not in page  # no page was written for it
    name = "x<y & 'z'"
    (tmp_path / f"{name}.html").write_text("")
    page = publish.write_index([record(name, {"a": 1})], tmp_path).read_text(encoding="utf-8")
    assert '<a href="x%3Cy%20%26%20%27z%27.html">x&lt;y &amp; &#x27;z&#x27;</a>' in page


def test_write_index_of_no_results_says_so(tmp_path):
    page = publish.write_index([], tmp_path / "html").read_text(encoding="utf-8")
    assert "No notebook has reported its headline figures yet." in page and "<table>" not in page


def test_write_index_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="results must be a list"):
        publish.write_index({"notebook": "01_x"}, tmp_path)
    with pytest.raises(TypeError, match=r"results\[0\] must be a results record"):
        publish.write_index(["01_x"], tmp_path)
    with pytest.raises(ValueError, match=r"results\[1\] lacks \['metrics'\]"):
        publish.write_index([record("01_x", {"a": 1}), {"notebook": "02_y", "scale": "ci", "wall_time_s": 1}],
                            tmp_path)
    with pytest.raises(TypeError, match=r"results\[0\]\['metrics'\] must be a dict"):
        publish.write_index([record("01_x", [1, 2])], tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="out_dir=.*is a file"):
        publish.write_index([], tmp_path / "a_file")
    with pytest.raises(TypeError, match="out_dir must be a path"):
        publish.write_index([], None)


def test_every_course_notebook_has_a_lecture_section():
    assert {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")} <= set(publish.SECTIONS)


# --- the terminal table --------------------------------------------------------------------------

def test_format_summary_shows_one_line_per_notebook_with_its_first_figures():
    table = results.format_summary([record("01_x", {"d": 4, "b": 0.123456, "a": 1.0, "c": 3}),
                                    record("02_y", {"z": 2}, wall_time_s=None)])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].split() == ["notebook", "scale", "time", "(s)", "headline", "figures"]
    assert lines[2].split(maxsplit=3) == ["01_x", "ci", "3", "a=1, b=0.1235, c=3 (+1 more)"]
    assert lines[3].split() == ["02_y", "ci", "-", "z=2"]
    with pytest.raises(ValueError, match="figures must be an int >= 1"):
        results.format_summary([], figures=0)


# --- mmcourse run ---------------------------------------------------------------------------------

def fake_run_notebook(source, output, scale, seed, results_folder, cell_timeout=None):
    """Stands in for papermill: the executed copy is the source, the figures are fixed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, output)
    results_folder.mkdir(parents=True, exist_ok=True)
    metrics = {f"figure_{i}": i / 10 for i in range(5)}
    (results_folder / f"{source.stem}.json").write_text(json.dumps(record(source.stem, metrics, scale=scale)))
    return 3.0


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A folder of two notebooks, `mmcourse run` working in tmp_path without a kernel."""
    for name in ("01_challenges", "02_representation"):
        write_executed_notebook(tmp_path / "nb" / f"{name}.ipynb")
    monkeypatch.setattr(cli, "run_notebook", fake_run_notebook)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cli_run_prints_one_line_per_notebook_and_publishes_the_pages(course, capsys):
    assert cli.main(["run", "--scale", "ci", "--notebooks", "nb", "--out", "build"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("notebook  "):].splitlines()
    assert [line.split()[:3] for line in table[2:4]] == [["01_challenges", "ci", "3"], ["02_representation", "ci", "3"]]
    assert "figure_0=0, figure_1=0.1, figure_2=0.2 (+2 more)" in table[2]
    assert table[4] == "full list: build/results/<notebook>.json and build/html/index.html"
    index = (course / "build" / "html" / "index.html").read_text(encoding="utf-8")
    for name in ("01_challenges", "02_representation"):
        assert f'<a href="{name}.html">{name}</a>' in index
        assert PNG in (course / "build" / "html" / f"{name}.html").read_text(encoding="utf-8")


def test_cli_run_no_html_writes_no_pages(course, capsys):
    assert cli.main(["run", "--notebooks", "nb", "--out", "build", "--only", "01_*", "--no-html"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "full list: build/results/<notebook>.json"
    assert not (course / "build" / "html").exists()


def test_run_notebook_hands_the_kernel_an_absolute_results_folder(tmp_path, monkeypatch):
    """The kernel works in the notebook's folder, so a relative `--out` must not follow it there."""
    import papermill

    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda *args, **kwargs: seen.update(kwargs))
    monkeypatch.setenv(cli.RESULTS_ENV, "")
    monkeypatch.chdir(tmp_path)
    cli.run_notebook(Path("nb/01_x.ipynb"), Path("build/notebooks/01_x.ipynb"), "ci", 0, Path("build/results"))
    assert Path(os.environ[cli.RESULTS_ENV]) == tmp_path.resolve() / "build" / "results"
    assert seen["cwd"] == "nb"


def test_run_notebook_switches_progress_bars_off_for_the_kernel(tmp_path, monkeypatch):
    """Without a front end a tqdm widget would be stored frozen at 0%."""
    import papermill

    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda *args, **kwargs: seen.update(progress=os.environ.get(cli.PROGRESS_ENV)))
    monkeypatch.setenv(cli.PROGRESS_ENV, "1")
    monkeypatch.setenv(cli.RESULTS_ENV, "")
    monkeypatch.chdir(tmp_path)
    cli.run_notebook(Path("nb/01_x.ipynb"), Path("build/notebooks/01_x.ipynb"), "cpu", 0, Path("build/results"))
    assert seen["progress"] == "0" and os.environ[cli.PROGRESS_ENV] == "1"  # for the kernel only
