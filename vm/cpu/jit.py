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
from numba import njit, types

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


# Argument types for the explicit signatures of compiled (not inlined) functions. Numba
# would otherwise compile a new copy for every combination of constant arguments it is
# called with (host_index_slow(..., 4, True, ...) and (..., 8, False, ...) ...), which
# tripled the core's compile time.
Mem = types.Array(types.uint8, 1, "C")  # guest memory
State = types.Array(types.int64, 1, "C")  # the state array
Table = types.Array(types.int64, 1, "C", readonly=True)  # a constant table (OPINFO)
i64 = types.int64
b1 = types.boolean


def pair(t):
    """A tuple of two t."""
    return types.UniTuple(t, 2)


def _compile(fn, signature=None, **options):
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = CACHE_DIR  # read when the dispatcher sets up its cache
    try:
        if signature is None:
            return njit(cache=True, _nrt=False, **options)(fn)
        return njit(signature, cache=True, _nrt=False, **options)(fn)
    finally:
        numba.config.CACHE_DIR = saved


def jit(signature):
    """Compile a function with numba (cached, no NRT), for exactly this signature.

    Use as ``@jit(i64(State, i64))``.
    """
    return lambda fn: _compile(fn, signature)


def jit_inline(fn):
    """Compile fn with numba and inline it at every call site."""
    return _compile(fn, inline="always")
