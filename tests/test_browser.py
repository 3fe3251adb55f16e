"""The gallery in a real browser: a JupyterLab server of the test's own, Debian's chromium
driven by Playwright, every cell run, Step changes EIP on the page, Run then Pause stops
the guest, and a screenshot kept in tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = pytest.mark.requires("chromium", "playwright", "jupyterlab")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def button(page, text: str):
    """The first widget button that says exactly ``text`` (its icon aside)."""
    return page.locator("button.jupyter-button", has_text=re.compile(rf"^\s*{text}\s*$")).first


def stop_group(process: subprocess.Popen) -> None:
    """End a process we started and everything it started (its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=15)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def lab_server():
    """A JupyterLab server over a copy of the gallery (see serve_lab)."""
    with serve_lab([ROOT / "lessons" / "gallery.ipynb"]) as server:
        yield server


@contextlib.contextmanager
def serve_lab(notebooks: list[Path]):
    """A JupyterLab server on a free port with a token, over a temporary root that holds
    copies of ``notebooks``; stopped (its whole process group) afterwards."""
    root = Path(tempfile.mkdtemp(prefix="vmlab-lab-"))
    for notebook in notebooks:
        shutil.copy(notebook, root / notebook.name)
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR"):
        env[name] = str(root / f".{name.lower()}")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(root / ".workspaces")
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:  # (CI runs as root)
        command.append("--allow-root")
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (root / "server.log").read_text())
                time.sleep(0.3)
        yield url, token, root
    finally:
        stop_group(server)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def test_gallery_in_a_real_browser(lab_server):
    from playwright.sync_api import sync_playwright

    url, token, root = lab_server
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(root / ".chromium"),  # a fresh profile (--user-data-dir)
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{url}/lab/tree/gallery.ipynb?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached")
            page.wait_for_function(
                "() => window.jupyterapp && document.querySelector("
                "'.jp-NotebookPanel .jp-Notebook-ExecutionIndicator, .jp-Notebook') !== null"
            )
            # wait for the kernel, then run every cell (Run > Run All Cells)
            page.wait_for_function(
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle'; }"
            )
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            eip = page.locator(".vmlab-eip").first
            eip.wait_for(state="visible", timeout=60_000)
            page.wait_for_selector(".vmlab-host", state="attached", timeout=60_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            assert errors == 0, "a cell raised an error"
            before = eip.inner_text()

            step = button(page, "Step")
            step.scroll_into_view_if_needed()
            step.click()
            page.wait_for_function(
                "before => document.querySelector('.vmlab-eip').innerText !== before", arg=before
            )
            assert eip.inner_text() != before

            status = page.locator(".vmlab-status").first
            run = button(page, "Run")
            at_start = status.inner_text()
            run.click()
            pause = button(page, "Pause")
            pause.wait_for(state="visible", timeout=10_000)
            page.wait_for_timeout(1500)
            assert status.inner_text() != at_start, "the guest ran"
            page.wait_for_function(
                "before => document.querySelector('.vmlab-eip').innerText !== before",
                arg=eip.inner_text(),
            )
            pause.click()
            run.wait_for(state="visible", timeout=10_000)
            page.wait_for_timeout(500)
            paused = status.inner_text()
            page.wait_for_timeout(1000)
            assert status.inner_text() == paused, "Pause stopped the guest"

            page.locator(".vmlab-eip").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "gallery.png"), full_page=False)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "gallery-failed.png"))
            raise
        finally:
            browser.close()
    assert time.monotonic() - started < 90


LESSONS = sorted(p for p in (ROOT / "lessons").glob("[0-9][0-9]-*.ipynb"))
# lesson 00 in every run; the others (about 20 s each) with -m slow
BROWSER_LESSONS = [
    pytest.param(p, id=p.stem, marks=() if p.stem.startswith("00-") else pytest.mark.slow)
    for p in LESSONS
]


@pytest.fixture(scope="module")
def lessons_server():
    with serve_lab(LESSONS) as server:
        yield server


def open_notebook(p, url: str, token: str, name: str, root: Path):
    """A fresh browser on ``name`` with its kernel idle; returns (browser, page)."""
    browser = p.chromium.launch_persistent_context(
        str(root / f".chromium-{name}"),
        executable_path=shutil.which("chromium") or "/usr/bin/chromium",
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1400, "height": 1000},
    )
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")  # (reset: not the last layout)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached")
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle'; }"
    )
    return browser, page


@pytest.mark.parametrize("path", BROWSER_LESSONS)
def test_lesson_in_a_real_browser(lessons_server, path):
    """Each lesson, every cell run in JupyterLab: no error, every check answers, and a
    view of the machine is on the page."""
    from playwright.sync_api import sync_playwright

    url, token, root = lessons_server
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    started = time.monotonic()
    with sync_playwright() as p:
        browser, page = open_notebook(p, url, token, path.name, root)
        try:
            # (not awaited: the command's promise ends only when every cell has run)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            # cells out of view are not in the page (JupyterLab windows them): read the
            # outputs from the notebook's model
            page.wait_for_function(
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " const cells = w.content.widgets.filter(c => c.model.type === 'code');"
                " const failed = cells.some(c => { const o = c.model.outputs;"
                "   for (let i = 0; i < o.length; i++)"
                "     if (o.get(i).type === 'error') return true; return false; });"
                " return failed || (w.sessionContext.session.kernel.status === 'idle'"
                "   && cells.every(c => c.model.executionCount !== null)); }",
                timeout=150_000,
            )
            outputs = page.evaluate(
                "() => window.jupyterapp.shell.currentWidget.content.widgets"
                ".filter(c => c.model.type === 'code').map(c => { const o = c.model.outputs;"
                " const all = []; for (let i = 0; i < o.length; i++) all.push(o.get(i).toJSON());"
                " return all; })"
            )
            flat = [o for cell in outputs for o in cell]
            errors = [o for o in flat if o.get("output_type") == "error"]
            assert not errors, f"a cell raised: {errors[0].get('evalue')}"
            text = json.dumps(flat)
            checks = re.findall(r"(\d\d-[a-z-]+): public (\d+)/(\d+), hidden tests run", text)
            assert len(checks) >= 2, "every exercise's check answered"
            assert all(passed == total for _, passed, total in checks), checks
            page.locator(".vmlab").first.wait_for(state="attached", timeout=30_000)  # a view
            page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"), full_page=False)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"{path.stem}-failed.png"))
            raise
        finally:
            browser.close()
    assert time.monotonic() - started < 180
