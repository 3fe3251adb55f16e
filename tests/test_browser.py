"""The gallery in a real browser: a JupyterLab server of the test's own, Debian's chromium
driven by Playwright, every cell run, Step changes EIP on the page, Run then Pause stops
the guest, and a screenshot kept in tests/artifacts/ (git-ignored)."""

from __future__ import annotations

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
    """A JupyterLab server on a free port with a token, over a temporary root that holds a
    copy of the gallery; stopped (its whole process group) after the test."""
    root = Path(tempfile.mkdtemp(prefix="vmlab-lab-"))
    shutil.copy(ROOT / "lessons" / "gallery.ipynb", root / "gallery.ipynb")
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
