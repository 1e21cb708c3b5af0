"""Keep freed memory in the process on Linux (glibc), so XLA:CPU's scratch buffers are reused.

A compiled step of the documents' CNN needs tens of MB of scratch per call (44 MB with XLA's
convolutions, 76 MB as patch matmuls). glibc serves every block over its mmap threshold (at
most 32 MB) with a fresh `mmap` and unmaps it on `free`, so each call page-faults it back in:
~11,000 faults and ~20 ms of kernel time per step for 44 MB, half of a one-step call
(benchmarks/README.md, "Where the time went"). Three `mallopt`
settings make glibc serve large blocks from one shared heap and keep freed memory there
instead (with per-thread arenas, a call now and then still landed on fresh pages when its
scratch came from another XLA thread's arena). They are process-wide (every library in the
process gets them) and cost resident memory: freed blocks, up to `TRIM_THRESHOLD` at the
top of the heap, stay mapped. So `import jdl` does not apply them: the experiments' command
line and the benchmark scripts call `keep_freed_memory()` first, and a notebook calls
`jdl.keep_freed_memory()` before anything runs on JAX (importing JAX starts no thread; its
CPU backend does, and an arena a thread has already made stays).
Set `JDL_KEEP_FREED_MEMORY=0` to leave the allocator alone.
"""

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 1 << 30
ENV_VAR = "JDL_KEEP_FREED_MEMORY"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Applies the settings once per process; True when glibc accepted them."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV_VAR, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # No mmap for large blocks: they come from the heap and return to it when freed ...
    # ... and the heap's free top is given back to the kernel only past 1 GB.
    # One arena for all threads: XLA's worker threads would otherwise free into arenas of
    # their own, whose heaps glibc still trims and maps afresh.
    return (
        bool(mallopt(M_MMAP_MAX, 0))
        and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        and bool(mallopt(M_ARENA_MAX, 1))
    )
