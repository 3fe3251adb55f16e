"""Shared test helpers."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

# How to get each outside tool the oracle tests use, for the message when it is missing.
TOOLS = {
    "nasm": ("program", "apt-get install nasm"),
    "unicorn": ("module", "pip install unicorn"),
    "capstone": ("module", "pip install capstone"),
    "chromium": ("program", "apt-get install chromium"),
    "playwright": ("module", "pip install playwright (the browser is Debian's chromium)"),
    "jupyterlab": ("module", "pip install jupyterlab"),
}


def tool_available(name: str) -> bool:
    """Whether an outside tool (a program on PATH or an importable module) is present."""
    kind, _ = TOOLS[name]
    if kind == "program":
        return shutil.which(name) is not None
    return importlib.util.find_spec(name) is not None


def require_tool(name: str) -> None:
    """Skip the calling test when a tool is missing; under CI (CI=true) fail instead, so
    that an oracle never silently stops checking."""
    if tool_available(name):
        return
    message = f"{name} is not installed ({TOOLS[name][1]})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}, and CI=true: the oracle tests must run under CI")
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*tools): the test needs these outside tools (nasm, unicorn, capstone, "
        "chromium, playwright, jupyterlab); "
        "skipped without them, failed under CI=true",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="requires"):
        for name in marker.args:
            require_tool(name)
