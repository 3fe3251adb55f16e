"""Every lesson notebook runs headless without an error, is committed without outputs, and
matches its jupytext text pair (the text is the one edited)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "lessons").glob("*.ipynb"))


def test_there_are_lesson_notebooks():
    assert any(path.name == "gallery.ipynb" for path in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_matches_its_text_pair(path):
    import jupytext
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit it stripped"
    pair = path.with_suffix(".py")
    assert pair.exists(), f"{path.name} has a jupytext pair ({pair.name})"
    text = jupytext.read(pair)
    assert [c.source for c in text.cells] == [c.source for c in notebook.cells], (
        f"{path.name} differs from {pair.name}: run `jupytext --sync {pair.relative_to(ROOT)}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_headless(path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError on the first error
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    shown = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    if path.name == "gallery.ipynb":
        assert len(shown) >= 7, "every view is displayed"
    else:  # a lesson: a live view at least (its time: python -m vm bench --lessons)
        assert len(shown) >= 1, "a lesson shows the machine live"
