"""Every notebook in a real JupyterLab, in a real (headless) browser, with live widgets.

For each notebook in notebooks/: a copy without outputs (the committed notebooks are never touched)
is opened in JupyterLab, served on 127.0.0.1 with a random token and MMCOURSE_SCALE=ci; Run All;
the kernel goes idle; no cell failed or printed a traceback; every widget rendered live (no
"Error displaying widget", no "Loading widget...", no plain-text repr); then each widget is used
once (slider, button, dropdown, text / int box) and its output must change. Screenshots go to
build/screenshots/, with a summary.json of timings, cut labels and figure sizes.

Needs Debian's Chromium and chromedriver (`apt-get install -y chromium chromium-driver`); without
them the tests skip, saying so. Nothing is downloaded: both binaries are given to Selenium.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import nbformat
import pytest

from browser_helpers import (WIDGET_FALLBACKS, WIDGET_MIME, WIDGET_REPRS, Lab, chromium_driver, find_browser,
                             lab_server)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SCREENSHOTS = ROOT / "build" / "screenshots"
# Run All at ci scale on two busy cores: papermill takes 40-130 s; the browser adds its share.
RUN_ALL_TIMEOUT_S = 360.0
INTERACTION_TIMEOUT_S = 120.0

pytestmark = [pytest.mark.browser, pytest.mark.timeout(720)]


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser_paths():
    found = find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    return found


def strip_outputs(source: Path, target: Path) -> None:
    """A copy of `source` without outputs, execution counts or saved widget state: what the browser
    then shows can only come from this run."""
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, target)


@pytest.fixture(scope="module")
def lab(browser_paths, tmp_path_factory):
    """A JupyterLab over copies of the notebooks, and a headless Chromium looking at it."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    (root / "notebooks").mkdir(parents=True)
    for notebook in NOTEBOOKS:
        strip_outputs(notebook, root / "notebooks" / notebook.name)
    env = {name: value for name, value in os.environ.items() if name != "MPLBACKEND"}
    # One BLAS / torch thread: the kernel shares two cores with JupyterLab and Chromium, and tiny models
    # on busy cores run many times slower with two threads that wait for each other.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MMCOURSE_SCALE="ci", MMCOURSE_RESULTS_DIR=str(base / "results"),
               MMCOURSE_CACHE_DIR=str(ROOT / "data" / "cache"), PYTHONUNBUFFERED="1")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with lab_server(root, env) as server, chromium_driver(*browser_paths) as chrome:
        yield Lab(chrome, server)


@pytest.fixture(scope="module")
def summary():
    """Per-notebook timings and findings, written to build/screenshots/summary.json at the end."""
    record: dict[str, dict] = {}
    yield record
    path = SCREENSHOTS / "summary.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**previous, **record}, indent=2) + "\n")


# --- what each notebook's widgets must do -------------------------------------------------------------

def control(widget, label: str, css: str):
    """The element `css` of the control whose description is `label`."""
    from selenium.webdriver.common.by import By

    row = widget.find_element(By.XPATH, f".//div[contains(@class, 'widget-inline-hbox')]"
                                        f"[./label[normalize-space()='{label}']]")
    return row.find_element(By.CSS_SELECTOR, css)


def type_into(box, text: str) -> None:
    """Replace the box's text by typing, then Enter (what a person does)."""
    from selenium.webdriver.common.keys import Keys

    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text + Keys.ENTER)


def move_slider(lab: Lab, widget, label: str, watched, what: str, ready, left: bool = False) -> tuple[str, str]:
    """Press an arrow key on the handle of the slider `label`, then wait until `watched` has changed and
    `ready(watched, new readout)` holds; the slider's readout before and after."""
    from selenium.webdriver.common.keys import Keys

    readout = control(widget, label, ".widget-readout")
    was, before = readout.text, watched.get_attribute("innerHTML")
    control(widget, label, ".noUi-handle").send_keys(Keys.ARROW_LEFT if left else Keys.ARROW_RIGHT)
    lab.html_changes(watched, before, INTERACTION_TIMEOUT_S, what, ready=lambda element: ready(element, readout.text))
    assert readout.text != was, f"the slider {label!r} did not move: its readout still says {was}"
    return was, readout.text


def outputs_of(widget):
    from selenium.webdriver.common.by import By

    return widget.find_elements(By.CSS_SELECTOR, ".widget-output")


def has_figure(output) -> bool:
    from selenium.webdriver.common.by import By

    return bool(output.find_elements(By.CSS_SELECTOR, "img"))


def shows_verdict(output) -> bool:
    return has_figure(output) and " wins: " in output.text


def shows_table(output) -> bool:
    return "the world says" in output.text


def assert_shows_figure(output, what: str) -> None:
    from selenium.webdriver.common.by import By

    assert output.find_elements(By.CSS_SELECTOR, "img"), f"{what}: no figure in the widget's output"
    assert "Traceback" not in output.text and "Error" not in output.text, f"{what}: {output.text[-1500:]}"


def use_01_rank_widget(lab: Lab, widget, shot) -> list[str]:
    """The LMF rank slider: a rank not trained yet is trained and joins the curve."""
    output = outputs_of(widget)[0]
    done = []
    if not has_figure(output):
        done.append("PROBLEM: after Run All the rank curve is not drawn (nothing until the slider moves)")
    was, now = move_slider(lab, widget, "LMF rank", output, "move the rank slider",
                           ready=lambda element, rank: has_figure(element) and f"rank {rank}:" in element.text)
    assert_shows_figure(output, "the rank curve after the slider moved")
    shot("after_rank")
    done.append(f"rank slider {was} -> {now}: LMF trained at the new rank, the curve redrawn")
    return done


def use_01_share_widget(lab: Lab, widget, shot) -> list[str]:
    """The trimodal-share slider, the model menu and the "retrain both" button."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    slider = control(widget, "trimodal share", ".noUi-handle")
    readout = control(widget, "trimodal share", ".widget-readout")
    menu = Select(control(widget, "model", "select"))
    button = widget.find_element(By.XPATH, ".//button[normalize-space()='retrain both']")
    output = outputs_of(widget)[0]
    done = []

    before = output.get_attribute("innerHTML")
    button.click()
    first = lab.html_changes(output, before, INTERACTION_TIMEOUT_S, "press 'retrain both'", ready=shows_verdict)
    assert_shows_figure(output, "retrain both")
    assert " wins: " in output.text, f"retrain both: no verdict printed, got {output.text!r}"
    shot("after_button")
    done.append("button 'retrain both' drew the comparison")

    share = readout.text
    slider.send_keys(Keys.ARROW_RIGHT)
    deadline = time.monotonic() + 10
    while readout.text == share and time.monotonic() < deadline:
        time.sleep(0.2)
    assert readout.text != share, f"the slider did not move: its readout still says {share}"
    done.append(f"slider moved {share} -> {readout.text}")

    model = menu.first_selected_option.text
    other = next(option.text for option in menu.options if option.text != model)
    menu.select_by_visible_text(other)
    assert menu.first_selected_option.text == other
    done.append(f"model menu {model} -> {other}")
    lab.wait_idle()

    button.click()
    lab.html_changes(output, first, INTERACTION_TIMEOUT_S, "slider + menu, then 'retrain both' again",
                     ready=shows_verdict)
    assert_shows_figure(output, "retrain both, second press")
    assert " wins: " in output.text
    shot("after_slider_menu_button")
    done.append("second press redrew the comparison for the new share and model")
    return done


def use_02_temperature_widget(lab: Lab, widget, shot) -> list[str]:
    """The temperature slider over section 4's similarity matrix (no retraining)."""
    output = outputs_of(widget)[0]
    assert_shows_figure(output, "the temperature softmax before the slider moved")
    was, now = move_slider(lab, widget, "temperature τ", output, "move the temperature slider",
                           ready=lambda element, _: has_figure(element), left=True)
    assert_shows_figure(output, "the temperature softmax after the slider moved")
    shot("after_temperature")
    return [f"temperature slider {was} -> {now}: the row softmax redrawn"]


def use_02_phrase_widget(lab: Lab, widget, shot) -> list[str]:
    """The GLIP phrase box and the test-picture box."""
    output = outputs_of(widget)[0]
    grounded = lambda element: has_figure(element) and "best box:" in element.text  # noqa: E731
    done = []
    if not grounded(output):
        done.append("PROBLEM: after Run All the grounded phrase is not drawn (nothing until a control changes)")
    for label, text, step in (("phrase", "the large outline shape", "after_phrase"), ("test picture", "7", "after_picture")):
        before = output.get_attribute("innerHTML")
        type_into(control(widget, label, "input"), text)
        lab.html_changes(output, before, INTERACTION_TIMEOUT_S, f"type {text!r} into {label}", ready=grounded)
        assert_shows_figure(output, f"the grounded phrase {step}")
        shot(step)
        done.append(f"typed {text!r} into {label!r}: boxes and probabilities redrawn")
    return done


def use_02_labels_widget(lab: Lab, widget, shot) -> list[str]:
    """The LSeg label box: typed names become the classes of a mask."""
    output = outputs_of(widget)[0]
    assert_shows_figure(output, "the LSeg masks before any typing")
    before = output.get_attribute("innerHTML")
    type_into(control(widget, "labels", "input"), "a blue circle, a square, a large shape")
    lab.html_changes(output, before, INTERACTION_TIMEOUT_S, "type three label names", ready=has_figure)  # names: in the figure
    assert_shows_figure(output, "the LSeg masks after typing")
    shot("after_labels")
    return ["typed three label names: one mask per name drawn"]


def use_02_prompt_widget(lab: Lab, widget, shot) -> list[str]:
    """The prompt box that re-ranks the retrieval pictures."""
    box = control(widget, "prompt", "input")
    output = outputs_of(widget)[0]
    assert_shows_figure(output, "the prompt explorer before any typing")
    before = output.get_attribute("innerHTML")
    type_into(box, "a small red square")
    lab.html_changes(output, before, INTERACTION_TIMEOUT_S, "type a prompt", ready=has_figure)
    assert_shows_figure(output, "the prompt explorer after typing")
    shot("after_prompt")
    return ["typed the prompt 'a small red square': the top pictures were re-ranked"]


def use_03_widgets(lab: Lab, widget, shot) -> list[str]:
    """The scene-seed box, the expression dropdown and the caption box."""
    from selenium.webdriver.support.ui import Select

    explorer, captions = outputs_of(widget)[:2]
    done = []
    if not has_figure(explorer):
        done.append("PROBLEM: after Run All the attention explorer is empty (nothing drawn until a control changes)")
    if not shows_table(captions):
        done.append("PROBLEM: after Run All the caption score table is empty (nothing drawn until a control changes)")

    before = explorer.get_attribute("innerHTML")
    type_into(control(widget, "scene seed", "input"), "101")
    lab.html_changes(explorer, before, INTERACTION_TIMEOUT_S, "change the scene seed", ready=has_figure)
    assert_shows_figure(explorer, "explorer after the seed change")
    shot("after_seed")
    done.append("scene seed 100 -> 101 redrew the attention maps")

    menu = Select(control(widget, "expression", "select"))
    assert len(menu.options) > 1, f"the expression menu offers {len(menu.options)} expression(s)"
    before = explorer.get_attribute("innerHTML")
    chosen = menu.options[1].text
    menu.select_by_index(1)
    lab.html_changes(explorer, before, INTERACTION_TIMEOUT_S, "choose another expression", ready=has_figure)
    shot("after_expression")
    done.append(f"expression menu -> {chosen!r} redrew the attention maps")

    before = captions.get_attribute("innerHTML")
    type_into(control(widget, "caption", "input"), "a blue square")
    lab.html_changes(captions, before, INTERACTION_TIMEOUT_S, "type a caption", ready=shows_table)
    assert "the world says" in captions.text, f"the caption table is missing: {captions.text!r}"
    shot("after_caption")
    done.append("typed the caption 'a blue square': the score table changed")
    return done


def use_04_widgets(lab: Lab, widget, shot) -> list[str]:
    """The question box (a word the parser cannot read, then a question it can) and the scene seed."""
    (answers,) = outputs_of(widget)[:1]
    answered = lambda output: has_figure(output) and "the world" in output.text  # noqa: E731
    done = []
    if not answered(answers):
        done.append("PROBLEM: after Run All the answers are not shown (nothing drawn until a control changes)")

    before = answers.get_attribute("innerHTML")
    type_into(control(widget, "question", "input"), "what colour is the big ball?")
    lab.html_changes(answers, before, INTERACTION_TIMEOUT_S, "type an unreadable question",
                     ready=lambda output: "cannot read" in output.text)
    assert "at word 2 ('colour')" in answers.text, f"the parser's complaint is missing: {answers.text!r}"
    shot("after_unreadable")
    done.append("typed 'what colour is the big ball?': the parser named the word it cannot read")

    for label, text, step in (("question", "how many things are left of the large circle?", "after_question"),
                              ("scene seed", "9", "after_seed")):
        before = answers.get_attribute("innerHTML")
        type_into(control(widget, label, "input"), text)
        lab.html_changes(answers, before, INTERACTION_TIMEOUT_S, f"type {text!r} into {label}", ready=answered)
        assert_shows_figure(answers, f"answers after {step}")
        shot(step)
    done.append("typed a counting question: modules, hops and every model's answer drawn")
    done.append("scene seed 56 -> 9 redrew the answers")
    return done


def use_05_widgets(lab: Lab, widget, shot) -> list[str]:
    """The shots slider (the prototypes and the k marker move) and the support-draw box; the explorer
    draws into an image widget and a line of text."""
    from selenium.webdriver.common.by import By

    readout = widget.find_element(By.CSS_SELECTOR, ".widget-html")
    drawn = lambda element: bool(element.find_elements(By.CSS_SELECTOR, "img[src]")) and "at k = " in readout.text  # noqa: E731
    done = []
    if not drawn(widget):
        done.append("PROBLEM: after Run All the prototype explorer is empty (nothing drawn until a control changes)")

    was, now = move_slider(lab, widget, "shots k", widget, "move the shots slider",
                           ready=lambda element, k: drawn(element) and f"at k = {k}:" in readout.text)
    shot("after_shots")
    done.append(f"shots slider {was} -> {now}: the episode and the k marker redrawn")

    before = widget.get_attribute("innerHTML")
    type_into(control(widget, "support draw", "input"), "11")
    lab.html_changes(widget, before, INTERACTION_TIMEOUT_S, "change the support draw",
                     ready=lambda element: drawn(element) and "support draw 11," in readout.text)
    shot("after_draw")
    done.append("support draw 3 -> 11: new shots, new prototypes")
    return done


# Each notebook's widget cells, in the order they appear: how to use each one.
INTERACTIONS = {"01_challenges": (use_01_rank_widget, use_01_share_widget),
                "02_representation": (use_02_temperature_widget, use_02_phrase_widget, use_02_labels_widget,
                                      use_02_prompt_widget),
                "03_alignment": (use_03_widgets,), "04_reasoning": (use_04_widgets,), "05_few_shot": (use_05_widgets,)}


# --- the test ----------------------------------------------------------------------------------------

def slowest_cells(cells: list[dict], n: int = 5) -> list[str]:
    """The `n` slowest cells of the run, from the timing JupyterLab records in cell metadata."""
    from datetime import datetime

    def seconds(timing):
        try:
            return (datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
                    - datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))).total_seconds()
        except (KeyError, TypeError, ValueError):
            return None

    timed = [(seconds(c["timing"]), c) for c in cells if c["type"] == "code" and c.get("timing")]
    timed = sorted(((t, c) for t, c in timed if t is not None), key=lambda pair: -pair[0])[:n]
    return [f"cell {c['index']}: {t:.1f} s ({c['source'].strip().splitlines()[0][:60]!r})" for t, c in timed]


def failures_in(cells: list[dict]) -> list[str]:
    """Cells that did not run, error outputs, tracebacks on stderr."""
    found = []
    for cell in cells:
        if cell["type"] != "code":
            continue
        first_line = cell["source"].strip().splitlines()[0][:80] if cell["source"].strip() else ""
        where = f"cell {cell['index']} ({first_line!r})"
        if cell["source"].strip() and cell["execution_count"] is None:
            found.append(f"{where} did not run")
        for output in cell["outputs"]:
            if output["output_type"] == "error":
                found.append(f"{where} raised {output['ename']}: {output['evalue']}")
            elif output["output_type"] == "stream" and output["name"] == "stderr":
                text = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
                if "Traceback" in text or "Error" in text:
                    found.append(f"{where} wrote to stderr: {text[-800:]}")
    return found


def widget_outputs(cells: list[dict]) -> list[int]:
    """Indices of the cells that display a widget."""
    return [cell["index"] for cell in cells
            if any(WIDGET_MIME in output.get("data", {}) for output in cell["outputs"])]


def use_widget_cell(lab: Lab, index: int, use, shot, where: str) -> dict:
    """Find the live widget view of cell `index`, screenshot it, look for cut labels and blank
    dropdowns, then `use` it; what was found and done."""
    from selenium.webdriver.common.by import By

    node = lab.cell_node(index)
    views = lab.chrome.execute_script(
        "return [...arguments[0].querySelectorAll('.jp-OutputArea-output')].filter("
        "o => o.classList.contains('jupyter-widgets') || o.querySelector('.jupyter-widgets'))", node)
    assert views, f"{where}: the widget cell rendered no live widget view"
    widget = views[0]
    assert widget.find_elements(By.CSS_SELECTOR, ".widget-inline-hbox, .widget-button, .widget-output"), \
        f"{where}: the widget view holds no control: {widget.text[:300]!r}"
    lab.chrome.execute_script("arguments[0].scrollIntoView({block: 'start'})", node)
    shot("lab")
    shot("before", widget)
    record = {"name": f"{where} ({use.__name__})", "blank_dropdowns": lab.chrome.execute_script(
        "return [...arguments[0].querySelectorAll('select')].filter(s => s.options.length && s.selectedIndex < 0)"
        ".map(s => s.closest('.widget-inline-hbox').innerText.split('\\n')[0])", widget)}
    record["cut_labels"] = lab.label_cuts(widget)
    for cut in record["cut_labels"]:
        warnings.warn(f"{where}: widget text {cut['text']!r} is cut: {cut['shown']} px shown of {cut['needs']} px",
                      stacklevel=1)
    started = time.monotonic()
    record["interactions"] = use(lab, widget, lambda step: shot(step, widget))
    record["interactions_s"] = round(time.monotonic() - started, 1)
    record["figures_in_widget"] = lab.images(widget)
    return record


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_jupyterlab_with_live_widgets(notebook, lab, summary):
    from selenium.webdriver.common.by import By

    stem = notebook.stem
    relative = f"notebooks/{notebook.name}"
    record = summary.setdefault(stem, {})
    shots: list[str] = []

    def shot(step: str, element=None) -> None:
        if element is not None:  # the whole widget in view, so its screenshot is not cropped
            lab.chrome.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
        path = SCREENSHOTS / f"{stem}_{step}.png"
        (element.screenshot if element is not None else lab.chrome.save_screenshot)(str(path))
        shots.append(str(path.relative_to(ROOT)))

    start = time.monotonic()
    try:
        lab.open(relative, workspace=f"w{stem.split('_')[0]}")
        record["open_s"] = round(time.monotonic() - start, 1)
        record["run_all_s"] = round(lab.run_all(RUN_ALL_TIMEOUT_S), 1)
        cells = lab.cells()
        record["slowest_cells"] = slowest_cells(cells)
        problems = failures_in(cells)
        assert not problems, f"{notebook.name} in JupyterLab:\n" + "\n".join(problems)

        printed = "".join("".join(o.get("text", "")) for c in cells for o in c["outputs"] if o["output_type"] == "stream")
        assert "scale 'ci'" in printed or "scale ci" in printed, "the kernel did not see MMCOURSE_SCALE=ci"

        # Every widget live: the widget renderer, not a fallback.
        page_text = lab.chrome.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel").text
        for fallback in WIDGET_FALLBACKS:
            assert fallback not in page_text, f"{notebook.name} shows {fallback!r}"
        plain = lab.chrome.find_elements(By.CSS_SELECTOR, '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="text/plain"]')
        for element in plain:
            assert not element.text.startswith(WIDGET_REPRS), f"a widget shown as text: {element.text[:200]!r}"

        indices = widget_outputs(cells)
        record["widget_cells"] = indices
        if not indices:
            shot("lab")
            return
        assert stem in INTERACTIONS, f"{notebook.name} shows widgets: add how to use them to INTERACTIONS"
        uses = INTERACTIONS[stem]
        assert len(indices) == len(uses), (f"{notebook.name}: {len(uses)} widget cell(s) expected by INTERACTIONS, "
                                           f"found cells {indices}")
        record["widgets"] = []
        for k, (index, use) in enumerate(zip(indices, uses)):
            record["widgets"].append(use_widget_cell(lab, index, use, lambda step, element=None, k=k:
                                                     shot(f"widget{k}_{step}", element), f"{notebook.name} cell {index}"))
        problems = failures_in(lab.cells()) + [f"{widget['name']}: {step}" for widget in record["widgets"]
                                               for step in widget["interactions"] if step.startswith("PROBLEM")] \
            + [f"{widget['name']}: after Run All the dropdown {name!r} shows no selection (its options were set, "
               f"no index)" for widget in record["widgets"] for name in widget["blank_dropdowns"]]
        assert not problems, f"{notebook.name} after using its widgets:\n" + "\n".join(problems)
    except Exception:
        try:
            shot("failure")
        except Exception:  # noqa: BLE001 - the browser may be gone; the first error matters
            pass
        record["server_log_tail"] = lab.server.log_tail(1500)
        raise
    finally:
        record["total_s"] = round(time.monotonic() - start, 1)
        record["screenshots"] = shots
        lab.server.shutdown_sessions()
