"""The examples in the docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "vm.machine",
    "vm.guest.toyos",
    "vm.interface",
    "vm.hypervisor.host",
    "vm.compare",
    "vm.consolidate",
    "vm.containers",
    "vm.lessons.runtime",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


def test_the_readme_examples_run_and_say_what_their_comments_say():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    names: dict = {}
    for block in blocks:
        exec(compile(block.replace("print(", "(lambda *a, **k: None)("), "README", "exec"), names)
    guest, view, result, m = names["guest"], names["view"], names["result"], names["m"]
    assert (view.guest.cpl, view.hardware.cpl) == (0, 1)
    assert result.ok and result.stats["exits_by_reason"]["#GP"] == 134
    assert guest.events[-1].kind == "stop" or guest.status == "shutdown"
    assert (m.regs.eax, m.instructions, m.cycles) == (55, 22, 22)
    assert type(names["g"]).__name__ == "Guest"  # (the Views example: a Lab of a guest)


def test_the_readme_points_only_inside_the_repository():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    assert "../" not in readme
    for path in re.findall(r"`((?:vm|tests|lessons|widgets|binder)/[\w/.]*)`", readme):
        assert (root / path.rstrip("/")).exists(), path
