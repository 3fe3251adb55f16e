"""The two ways the core's functions are compiled, and where the compiled code is cached.

``jit``: compiled by numba, cached on disk, without the reference-counting runtime (the
core never allocates, so it needs none, and refcount traffic on every array argument
was the largest cost per instruction).
``jit_inline``: the same, and inlined into every caller. Numba does not inline across
separately compiled functions, so the small helpers on the hot path (register access,
flags, address translation) use this; each inlined call site costs compile time.

Numba's cache notices when a function's own file changes, not when a function it inlined
or a constant it froze changes in another file. So the core caches in a directory named
after a hash of every source file in vm/cpu and vm/isa: any edit there starts a fresh
cache. The directory is ``$VMLAB_CACHE_DIR``, else ``$NUMBA_CACHE_DIR``, else
``~/.cache/vmlab``, with ``numba-<hash>`` below it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba
from numba import njit

_PACKAGE = Path(__file__).resolve().parent.parent


def source_hash() -> str:
    """A short hash of the sources the compiled core depends on."""
    digest = hashlib.sha256()
    for folder in ("cpu", "isa"):
        for path in sorted((_PACKAGE / folder).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where the compiled core is cached."""
    base = os.environ.get("VMLAB_CACHE_DIR") or os.environ.get("NUMBA_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "vmlab"
    return root / f"numba-{source_hash()}"


CACHE_DIR = str(cache_dir())


def _compile(fn, **options):
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = CACHE_DIR  # read when the dispatcher sets up its cache
    try:
        return njit(cache=True, _nrt=False, **options)(fn)
    finally:
        numba.config.CACHE_DIR = saved


def jit(fn):
    """Compile fn with numba (cached, no NRT)."""
    return _compile(fn)


def jit_inline(fn):
    """Compile fn with numba and inline it at every call site."""
    return _compile(fn, inline="always")
