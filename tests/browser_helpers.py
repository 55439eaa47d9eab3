"""JupyterLab in a headless Chromium, for tests/test_browser.py.

`lab_server` starts JupyterLab on 127.0.0.1 (a free port, a random token, its own settings and
workspaces) in its own process group and stops it, and every kernel it started, whatever happens.
`chromium_driver` starts Debian's Chromium headless through the system chromedriver; nothing is ever
downloaded (Selenium Manager is never consulted: both paths are given). `Lab` drives one notebook
through `window.jupyterapp`, the application object that `--LabApp.expose_app_in_browser` exposes.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
INSTALL_HINT = "as root on Debian: apt-get update && apt-get install -y chromium chromium-driver"

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# What a notebook shows instead of a live widget when its front end fails.
WIDGET_FALLBACKS = ("Error displaying widget", "Loading widget...", "Loading widget\u2026")
WIDGET_REPRS = ("VBox(children=", "HBox(children=", "interactive(children=", "Output(")


def find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or a one-line reason why the browser tests cannot run."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is missing: pip install -e ".[dev]"'
    driver = shutil.which("chromedriver") or next((p for p in CHROMEDRIVER_CANDIDATES if os.path.exists(p)), None)
    browser = next((p for p in (shutil.which("chromium"), *CHROMIUM_CANDIDATES) if p and os.path.exists(p)), None)
    if not driver or not browser:
        return f"no Chromium / chromedriver found; install them {INSTALL_HINT}"
    return browser, driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), so kernels in their own sessions are found too."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True


@dataclass
class LabServer:
    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_sessions(self) -> None:
        """Shut every running kernel down through the REST API (frees the two cores between notebooks)."""
        with contextlib.suppress(Exception):
            for session in self.api("/api/sessions"):
                with contextlib.suppress(Exception):
                    self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


def _lab_settings(settings: Path) -> None:
    """User settings for a quiet, test-friendly Lab: every cell in the DOM (no windowing), no news."""
    files = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none", "recordTiming": True},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }
    for name, value in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@contextlib.contextmanager
def lab_server(root: Path, env: dict[str, str], startup_timeout: float = 120.0):
    """JupyterLab serving `root`; on exit its kernels are shut down and its process group and every
    descendant (kernels run in sessions of their own) are terminated, then killed."""
    home = root.parent / "lab-home"
    for sub in ("config", "runtime", "settings", "workspaces", "ipython"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    _lab_settings(home / "settings")
    token = secrets.token_hex(24)
    port = free_port()
    env = dict(env, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               IPYTHONDIR=str(home / "ipython"), JUPYTER_PLATFORM_DIRS="1")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--MappingKernelManager.cull_idle_timeout=0"]
    if os.geteuid() == 0:  # CI runs as root
        command.append("--allow-root")
    log = home / "jupyterlab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, log, process)
    descendants: set[int] = set()
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(OSError):
                server.api("/api/status")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within {startup_timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        descendants.update(_children(process.pid))
        if process.poll() is None:
            server.shutdown_sessions()
        descendants.update(_children(process.pid))
        groups = {process.pid}
        for pid in descendants:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        groups.discard(os.getpgid(0))  # never our own group
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for group in groups:
                _kill_group(group, sig)
            for pid in descendants:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and (process.poll() is None or any(map(_alive, descendants))):
                time.sleep(0.2)
            if process.poll() is not None and not any(map(_alive, descendants)):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


@contextlib.contextmanager
def chromium_driver(browser: str, driver: str, width: int = 1400, height: int = 1000):
    """A headless Chromium (the system one, through the system chromedriver); quit whatever happens."""
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, should anything reach it: no network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--disable-extensions", "--no-first-run", "--disable-background-networking",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    service = Service(executable_path=driver, log_output=subprocess.DEVNULL)
    chrome = webdriver.Chrome(service=service, options=options)
    try:
        chrome.set_script_timeout(60)
        yield chrome
    finally:
        with contextlib.suppress(Exception):
            chrome.quit()


# --- one notebook in the Lab ------------------------------------------------------------------------

JS_PANEL = """
const app = window.jupyterapp;
if (!app || !app.shell) return null;
const panel = app.shell.currentWidget;
if (!panel || !panel.sessionContext || !panel.content || !panel.context) return null;
"""

JS_STATE = JS_PANEL + """
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const prompts = [...panel.node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
return {path: panel.context.path, ready: panel.sessionContext.isReady && panel.context.isReady,
        kernel: kernel ? kernel.status : null, connection: kernel ? kernel.connectionStatus : null,
        kernel_id: kernel ? kernel.id : null,
        pending: prompts.filter(p => p.includes('*')).length, run_all: window.__mmRunAll || null,
        running: (() => { const cell = panel.content.widgets.find(c => c.model.type === 'code' &&
                      (c.model.getMetadata('execution') || {})['iopub.execute_input'] &&
                      !(c.model.getMetadata('execution') || {})['shell.execute_reply']);
                  return cell ? panel.content.widgets.indexOf(cell) + ': ' + cell.model.sharedModel.getSource().slice(0, 120) : null; })()};
"""

JS_RUN_ALL = JS_PANEL + """
window.__mmRunAll = {done: false};
app.commands.execute('notebook:run-all-cells').then(
    ok => { window.__mmRunAll = {done: true, ok: ok}; },
    err => { window.__mmRunAll = {done: true, ok: false, error: String(err)}; });
return true;
"""

JS_CELLS = JS_PANEL + """
return panel.content.widgets.map((cell, index) => ({
    index: index, type: cell.model.type, source: cell.model.sharedModel.getSource(),
    execution_count: cell.model.type === 'code' ? cell.model.executionCount : null,
    outputs: cell.model.type === 'code' ? cell.model.outputs.toJSON() : [],
    timing: cell.model.type === 'code' ? (cell.model.getMetadata('execution') || null) : null}));
"""

JS_CELL_NODE = JS_PANEL + "return panel.content.widgets[arguments[0]].node;"

JS_LABEL_CUTS = """
const root = arguments[0];
return [...root.querySelectorAll('.widget-label, .widget-label-basic, .widget-readout, button, .widget-dropdown select')]
    .filter(el => el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1)
    .map(el => ({text: (el.textContent || el.value || '').trim(), shown: el.clientWidth, needs: el.scrollWidth}));
"""

JS_IMAGES = """
return [...arguments[0].querySelectorAll('img')].filter(img => img.offsetParent !== null)
    .map(img => ({shown: [img.clientWidth, img.clientHeight], natural: [img.naturalWidth, img.naturalHeight]}));
"""


class Lab:
    """Drives the notebook open in the current tab."""

    def __init__(self, chrome, server: LabServer):
        self.chrome = chrome
        self.server = server

    def open(self, relative: str, workspace: str, timeout: float = 180.0) -> dict:
        """Open `relative` (under the server's root) in a fresh workspace; wait for an idle kernel."""
        self.chrome.get(f"{self.server.url}/lab/workspaces/{workspace}/tree/{relative}"
                        f"?reset&token={self.server.token}")
        return self.wait(lambda s: s and s["path"] == relative and s["ready"] and s["kernel"] == "idle"
                         and s["connection"] == "connected", timeout, f"{relative}: notebook and kernel ready")

    def state(self) -> dict | None:
        return self.chrome.execute_script(JS_STATE)

    def wait(self, predicate, timeout: float, what: str, poll: float = 0.5):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.state()
            if predicate(last):
                return last
            time.sleep(poll)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last state {last}")

    def run_all(self, timeout: float) -> float:
        """Run All; wait for every cell to finish and the kernel to go idle. Returns seconds taken."""
        start = time.monotonic()
        assert self.chrome.execute_script(JS_RUN_ALL), "no notebook panel to run"
        self.wait(lambda s: s and s["run_all"] and s["run_all"]["done"], timeout, "Run All to finish", poll=1.0)
        self.wait_idle(timeout=60)
        return time.monotonic() - start

    def kernel_busy(self) -> bool:
        """The server's view of the notebook's kernel (it sees every status message, those of widget
        comm messages too), so a callback still running is never mistaken for an idle kernel."""
        state = self.state()
        if not state or not state["kernel_id"]:
            return True
        try:
            return self.server.api(f"/api/kernels/{state['kernel_id']}")["execution_state"] != "idle"
        except Exception:  # noqa: BLE001 - an unanswered poll counts as busy
            return True

    def wait_idle(self, timeout: float = 60.0, settle: float = 1.0) -> None:
        """The kernel idle and no cell pending, for `settle` seconds in a row."""
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            s = self.state()
            if s and s["kernel"] == "idle" and not s["pending"] and not self.kernel_busy():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return
            else:
                quiet_since = None
            time.sleep(0.25)
        raise TimeoutError(f"the kernel did not go idle within {timeout:.0f} s; last state {self.state()}")

    def cells(self) -> list[dict]:
        return self.chrome.execute_script(JS_CELLS)

    def cell_node(self, index: int):
        return self.chrome.execute_script(JS_CELL_NODE, index)

    def label_cuts(self, element) -> list[dict]:
        return self.chrome.execute_script(JS_LABEL_CUTS, element)

    def images(self, element) -> list[dict]:
        return self.chrome.execute_script(JS_IMAGES, element)

    def html_changes(self, element, before: str, timeout: float, what: str, ready=None,
                     settle: float = 1.0) -> str:
        """Wait until `element`'s innerHTML differs from `before`, `ready(element)` holds (when given),
        the kernel is idle and the HTML has held still for `settle` seconds; the new HTML."""
        deadline = time.monotonic() + timeout
        stable_html, stable_since = None, None
        while time.monotonic() < deadline:
            now = element.get_attribute("innerHTML")
            if now != before and (ready is None or ready(element)) and not self.kernel_busy():
                if now != stable_html:
                    stable_html, stable_since = now, time.monotonic()
                elif time.monotonic() - stable_since >= settle:
                    return now
            else:
                stable_html = None
            time.sleep(0.25)
        raise AssertionError(f"{what}: the widget's output did not change within {timeout:.0f} s; "
                             f"it shows {element.text[-600:]!r}")
