"""The two ways the core's functions are compiled.

``jit``: compiled by numba, cached on disk, without the reference-counting runtime (the
core never allocates, so it needs none, and refcount traffic on every array argument
was the largest cost per instruction).
``jit_inline``: the same, and inlined into every caller. Numba does not inline across
separately compiled functions, so the small helpers on the hot path (register access,
flags, address translation) use this; each inlined call site costs compile time.
"""

from __future__ import annotations

from numba import njit


def jit(fn):
    """Compile fn with numba (cached, no NRT)."""
    return njit(cache=True, _nrt=False)(fn)


def jit_inline(fn):
    """Compile fn with numba and inline it at every call site."""
    return njit(cache=True, _nrt=False, inline="always")(fn)
