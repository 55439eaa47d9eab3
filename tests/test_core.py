"""The base of the package: scale knob, device helpers, the results contract, the CLI, packaging."""
import json
import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

import mmcourse
from mmcourse import cli, paths, results
from mmcourse.config import SCALES, course_config, resolve_scale
from mmcourse.device import autocast, get_device, seed_everything

ROOT = Path(__file__).resolve().parents[1]


# --- scale knob ------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", SCALES)
def test_course_config_sizes_grow_with_scale(scale):
    cfg = course_config(scale)
    assert cfg.scale == scale and cfg.pick(ci=1, cpu=2, gpu=3) == SCALES.index(scale) + 1
    assert cfg.n_train > 0 and cfg.epochs > 0 and cfg.batch_size > 0


def test_scales_are_ordered():
    ci, cpu, gpu = (course_config(s) for s in SCALES)
    assert ci.n_train < cpu.n_train < gpu.n_train
    assert not ci.progress and cpu.progress


def test_auto_reads_environment_then_hardware(monkeypatch):
    monkeypatch.setenv("MMCOURSE_SCALE", "ci")
    assert resolve_scale("auto") == "ci"
    monkeypatch.delenv("MMCOURSE_SCALE")
    assert resolve_scale("auto") == ("gpu" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("bad", ["big", "CPU ", ""])
def test_unknown_scale_is_rejected(bad):
    with pytest.raises(ValueError, match="scale"):
        course_config(bad)


def test_unknown_scale_in_environment_is_rejected(monkeypatch):
    monkeypatch.setenv("MMCOURSE_SCALE", "huge")
    with pytest.raises(ValueError, match="MMCOURSE_SCALE"):
        course_config("auto")


def test_non_string_scale_is_rejected():
    with pytest.raises(TypeError, match="scale"):
        course_config(3)


def test_course_config_sets_the_threads_asked_for_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("MMCOURSE_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert course_config("ci", threads=1).threads == 1 == torch.get_num_threads()
        assert course_config("ci").threads == 1  # None leaves the count as it is
        monkeypatch.setenv("MMCOURSE_THREADS", "2")
        assert course_config("ci", threads=1).threads == 2 == torch.get_num_threads()
        for bad in ("0", "two", "-1"):
            monkeypatch.setenv("MMCOURSE_THREADS", bad)
            with pytest.raises(ValueError, match="MMCOURSE_THREADS"):
                course_config("ci")
        monkeypatch.delenv("MMCOURSE_THREADS")
        for bad in (0, 1.5, True, "1"):
            with pytest.raises(ValueError, match="threads"):
                course_config("ci", threads=bad)
    finally:
        torch.set_num_threads(before)


# --- device -------------------------------------------------------------------------------------

def test_get_device_prefers_accelerators():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert get_device().type == expected
    assert get_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_get_device_refuses_missing_cuda():
    with pytest.raises(ValueError, match="prefer"):
        get_device("cuda")


def test_autocast_is_a_no_op_on_cpu():
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu"):
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_seed_everything_makes_torch_and_numpy_repeat():
    import numpy as np

    seed_everything(7)
    first = torch.rand(3), np.random.rand(3)
    generator = seed_everything(7)
    assert torch.equal(first[0], torch.rand(3)) and np.array_equal(first[1], np.random.rand(3))
    assert generator.initial_seed() == 7


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2**63, ValueError), (2**70, ValueError),
                                        (1.5, TypeError), ("0", TypeError), (True, TypeError)])
def test_seed_everything_rejects_bad_seeds(bad, error):
    with pytest.raises(error, match="seed"):
        seed_everything(bad)


def test_env_report_names_versions_and_device():
    report = mmcourse.env_report()
    assert report["torch"] == torch.__version__ and report["device"] == str(get_device())


# --- results contract ---------------------------------------------------------------------------

def test_report_writes_the_contract(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path))
    course_config("ci")
    seed_everything(3)
    path = mmcourse.report("01_demo", {"accuracy": 0.875, "n": 12, "tensor": torch.tensor(0.5)})
    record = json.loads(path.read_text())
    assert path == tmp_path / "01_demo.json"
    assert record["scale"] == "ci" and record["seed"] == 3 and record["device"] == str(get_device())
    assert record["metrics"] == {"accuracy": 0.875, "n": 12, "tensor": 0.5}
    assert record["wall_time_s"] >= 0
    assert "accuracy" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("metrics, error", [
    ({}, TypeError), ([("a", 1)], TypeError), ({"a": float("nan")}, ValueError),
    ({"a": "high"}, ValueError), ({"a": True}, ValueError), ({3: 1.0}, TypeError),
])
def test_report_rejects_bad_metrics(metrics, error, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path))
    with pytest.raises(error, match="metrics"):
        mmcourse.report("demo", metrics)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["", "../escape", "a/b"])
def test_report_rejects_bad_names(name, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="name"):
        mmcourse.report(name, {"a": 1.0})


def test_results_dir_defaults_to_project_build(monkeypatch):
    monkeypatch.delenv(paths.RESULTS_ENV, raising=False)
    monkeypatch.chdir(ROOT / "tests")
    assert paths.results_dir() == ROOT / "build" / "results"


def test_format_table_lists_every_figure():
    table = results.format_table([{"notebook": "01_x", "scale": "ci", "wall_time_s": 3.2,
                                   "metrics": {"b": 0.5, "a": 2}}])
    lines = table.splitlines()
    assert lines[0].split() == ["notebook", "scale", "time", "(s)", "figure", "value"]
    assert lines[2].split() == ["01_x", "ci", "3.2", "a", "2"] and lines[3].split() == ["b", "0.5"]


# --- command line -------------------------------------------------------------------------------

def test_cli_run_with_no_notebooks_says_so(tmp_path, capsys):
    assert cli.main(["run", "--notebooks", str(tmp_path), "--out", str(tmp_path / "build")]) == 0
    assert "nothing to run" in capsys.readouterr().out


def test_cli_run_reports_a_failing_notebook(tmp_path, capsys):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("SCALE = 'auto'\nSEED = 0")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell("raise RuntimeError('broken on purpose')")]
    (tmp_path / "nb").mkdir()
    nbformat.write(notebook, tmp_path / "nb" / "broken.ipynb")
    code = cli.main(["run", "--scale", "ci", "--notebooks", str(tmp_path / "nb"), "--out", str(tmp_path / "build")])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED" in out and "broken.ipynb" in out
    assert (tmp_path / "build" / "notebooks" / "broken.ipynb").exists()


def test_cli_env_prints_versions(capsys):
    assert cli.main(["env"]) == 0
    assert re.search(r"^torch\s+\S+", capsys.readouterr().out, re.M)


def test_cli_rejects_unknown_scale():
    with pytest.raises(SystemExit):
        cli.main(["run", "--scale", "huge"])


# --- packaging ------------------------------------------------------------------------------------

def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _with_extras(project: dict, extra: str) -> list[str]:
    """The requirements of `extra`, with a reference to another of the project's extras
    ("mmcourse[grading]") replaced by that extra's requirements."""
    requirements = []
    for requirement in project["optional-dependencies"][extra]:
        if _name(requirement) == project["name"]:
            inner = re.search(r"\[(.+)\]", requirement).group(1)
            requirements += [r for name in inner.split(",") for r in _with_extras(project, name.strip())]
        else:
            requirements.append(requirement)
    return requirements


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + _with_extras(project, "dev")
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert {_name(r) for r in pip_section} == {_name(r) for r in requirements}
    assert sorted(r.replace(" ", "") for r in pip_section) == sorted(r.replace(" ", "") for r in requirements)


def test_dependencies_are_ranges_not_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [r for r in project["dependencies"] if "==" in r]


def test_cli_world_writes_a_contact_sheet(tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert cli.main(["world", "--out", str(out), "--n", "4", "--seed", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "wrote" in capsys.readouterr().out


def test_progress_bars_follow_the_scale_unless_switched_off(monkeypatch):
    monkeypatch.delenv("MMCOURSE_PROGRESS", raising=False)
    assert course_config("cpu").progress and not course_config("ci").progress
    monkeypatch.setenv("MMCOURSE_PROGRESS", "0")
    assert not course_config("cpu").progress and not course_config("gpu").progress
    monkeypatch.setenv("MMCOURSE_PROGRESS", "1")
    assert course_config("gpu").progress
    monkeypatch.setenv("MMCOURSE_PROGRESS", "no")
    with pytest.raises(ValueError, match="MMCOURSE_PROGRESS='no' is not allowed"):
        course_config("cpu")
