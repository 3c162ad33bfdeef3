"""Keep freed memory in the process: the C allocator setting the training commands run with.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc hands a large block (above
its mmap threshold, which adapts up to 32 MiB) to the kernel when it is freed and returns the
top of its heap once more than the trim threshold is free there, so a training step that
allocates and frees the same activations every step page-faults all of them in again each
time (every fault zeroes a 4 KiB page). The demo's training steps are such steps (its
masked-LM logits alone are 78 MB); keeping freed memory cuts their page faults by 3-6x and
their time, with bit-identical losses (docs/performance.md, "Freed memory kept in the
process", has the measurements). This is what the PyTorch performance guide gets from
preloading jemalloc or tcmalloc, done with the allocator the process already has.

:func:`keep_freed_memory` raises both glibc thresholds (``mallopt``), so freed blocks stay in
the heap for the next step: the process holds on to its peak memory instead of returning it.
The ``perceiver-vl`` commands that train or encode in batches call it at start
(:data:`COMMANDS`); the search service does not (it runs for long and should give memory
back), nor does ``bench`` (it compares code against other code run with the default
allocator). Library users can call it themselves. It changes nothing, and says why, when the C
library is not glibc, when the user already tunes the allocator (``MALLOC_*`` or
``GLIBC_TUNABLES`` variables, a preloaded jemalloc, tcmalloc or mimalloc), or when
``PERCEIVER_VL_ALLOCATOR=system`` asks it not to.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from dataclasses import dataclass

#: The ``perceiver-vl`` commands that call :func:`keep_freed_memory` before they run.
COMMANDS = frozenset({"fit", "validate", "test", "demo", "evaluate", "index", "analyze"})

#: Environment variable: ``system`` leaves the C allocator as it is, ``keep`` (or unset) is the
#: default.
OPT_OUT_VARIABLE = "PERCEIVER_VL_ALLOCATOR"
_CHOICES = ("keep", "system")

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks up to 1 GiB come from the heap and stay there when freed; the heap top is never
# trimmed below 2 GiB - 1 (mallopt takes a C int).
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1

# Environment variables through which a user already chooses the allocator's behaviour.
_USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)


@dataclass(frozen=True)
class AllocatorSetting:
    """What :func:`keep_freed_memory` did: ``applied`` and, either way, a one-line ``reason``."""

    applied: bool
    reason: str


_last: AllocatorSetting | None = None


def current_setting() -> str:
    """What this process's last :func:`keep_freed_memory` call did, for reports."""
    return _last.reason if _last is not None else "C allocator left as it is (not asked)"


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> AllocatorSetting:
    """Make glibc keep freed memory in the heap for reuse (see the module docstring).

    ``environ`` (default ``os.environ``) is where the opt-out and the user's own allocator
    settings are looked up. Safe to call more than once. Raises ``ValueError`` when
    ``PERCEIVER_VL_ALLOCATOR`` holds anything but ``keep`` or ``system``.
    """
    global _last
    _last = _decide(os.environ if environ is None else environ)
    return _last


def _decide(env: Mapping[str, str]) -> AllocatorSetting:
    choice = env.get(OPT_OUT_VARIABLE, "").strip().lower() or "keep"
    if choice not in _CHOICES:
        raise ValueError(
            f"{OPT_OUT_VARIABLE}={env[OPT_OUT_VARIABLE]!r} is not a choice: set it to 'system' "
            "to leave the C allocator as it is, or 'keep' (the default) to keep freed memory"
        )
    if choice == "system":
        return AllocatorSetting(False, f"C allocator left as it is ({OPT_OUT_VARIABLE}=system)")
    preload = env.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return AllocatorSetting(False, f"C allocator left as it is (LD_PRELOAD={preload})")
    user = [name for name in _USER_SETTINGS if env.get(name)]
    if user:
        return AllocatorSetting(
            False, f"C allocator left as it is (the user sets {', '.join(user)})"
        )
    libc = _glibc()
    if libc is None:
        return AllocatorSetting(False, "C allocator left as it is (not glibc)")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        return AllocatorSetting(False, "C allocator left as it is (glibc refused mallopt)")
    return AllocatorSetting(
        True,
        "glibc keeps freed memory for reuse: mmap threshold 1 GiB, heap not trimmed below 2 GiB",
    )


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded in this process, libc among them
    except (OSError, TypeError):  # TypeError: platforms where CDLL needs a library name
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc
