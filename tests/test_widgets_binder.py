"""Binder from scratch (slow: ``python -m pytest -m slow tests/test_widgets_binder.py``):
a fresh virtual environment gets only what binder/requirements.txt installs, postBuild
compiles the core into its cache, and a process started through binder/start draws the
first view from that warm cache in seconds. The repository is copied first (its tracked
files), as Binder clones it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_VIEW = (
    "import time; t = time.perf_counter(); import vm, widgets; "
    "lab = widgets.Lab(vm.boot('syscalls', mode='trap-emulate')); "
    "lab.controls.step_button.click(); print(f'{time.perf_counter() - t:.2f}')"
)


def run(command, cwd, env, timeout=1800):
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_binder_builds_from_its_files_and_starts_warm(tmp_path):
    repo = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (repo / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name.decode())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
    }
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST"):
        if name in os.environ:
            env[name] = os.environ[name]
    (tmp_path / "home").mkdir()
    timings = {}
    started = time.perf_counter()
    run(["pip", "install", "-q", "-r", "binder/requirements.txt"], repo, env)
    timings["pip install"] = time.perf_counter() - started
    started = time.perf_counter()
    out = run(["bash", "binder/postBuild"], repo, env)
    timings["postBuild"] = time.perf_counter() - started
    assert "compiled and cached" in out
    started = time.perf_counter()
    first_view = float(run(["binder/start", "python", "-c", FIRST_VIEW], repo, env).split()[-1])
    timings["start to first view (process)"] = time.perf_counter() - started
    extensions = run(["binder/start", "jupyter", "labextension", "list"], repo, env)
    print({k: round(v, 1) for k, v in timings.items()}, "first view in-process", first_view)
    assert "@jupyter-widgets/jupyterlab-manager" in extensions
    assert timings["start to first view (process)"] < 5.0, timings
