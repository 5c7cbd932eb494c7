"""Just-in-time build of the fused CPU kernels in ``convattn/fused/csrc``.

The C++ sources are compiled on first use with :func:`torch.utils.cpp_extension.load`
(needs a C++ compiler and ninja; once per machine and source version). Builds are cached in a
directory keyed by the sources, the compiler flags, the compiler, the CPU's instruction-set
flags and the torch and Python versions, so ``-march=native`` code is only ever loaded on
the kind of CPU it was built for. Set ``CONVATTN_EXTENSIONS_DIR`` to move the cache
(default: ``$XDG_CACHE_HOME/convattn/extensions`` or ``~/.cache/convattn/extensions``) and
``CONVATTN_NO_BUILD=1`` to never build (everything then runs the eager modules).

A failed build is not an error: :func:`load_fused` warns once and returns ``None``, and
callers fall back to the eager implementation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = ["FusedOps", "build_key", "load_fused"]

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("fused_cbam.cpp", "cbam_forward.cpp", "cbam_backward.cpp")
HEADERS = ("cbam.h", "cbam_sample.h", "cbam_kernels.h", "cbam_simd.h")
# -fopenmp: at::parallel_for is a header template, parallel only where _OPENMP is defined
# (the library then links the libgomp.so.1 that torch has already loaded).
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-DNDEBUG")
LDFLAGS = ("-fopenmp",)


_lock = threading.Lock()


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key() -> str:
    """Hash of everything that decides the binary: sources, flags, compiler, CPU, versions."""
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    parts = (
        " ".join(CFLAGS + LDFLAGS),
        os.environ.get("CXX", "c++"),
        _cpu_flags(),
        platform.machine(),
        torch.__version__,
        sys.version,
    )
    h.update("\n".join(parts).encode())
    return h.hexdigest()[:16]


def _cache_root() -> Path:
    if "CONVATTN_EXTENSIONS_DIR" in os.environ:
        return Path(os.environ["CONVATTN_EXTENSIONS_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convattn" / "extensions"


class FusedOps(NamedTuple):
    """The extension's operators (``torch.ops.convattn.*``, CPU kernels)."""

    forward: Any
    backward: Any


class _NoCudaNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found" notice: CPU kernels need no CUDA."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


def _cpp_extension() -> Any:
    """``torch.utils.cpp_extension``, imported without its CUDA notice."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    notice = _NoCudaNotice()
    logger.addFilter(notice)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.removeFilter(notice)
    return cpp_extension


def _build() -> FusedOps:
    cpp_extension = _cpp_extension()
    key = build_key()
    build_dir = _cache_root() / f"fused_cbam_{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(  # loads the library, which registers torch.ops.convattn
        name=f"convattn_fused_cbam_{key}",
        sources=[str(CSRC / s) for s in SOURCES],
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        extra_include_paths=[str(CSRC)],
        build_directory=str(build_dir),
        with_cuda=False,
        is_python_module=False,
        verbose=False,
    )
    ops = torch.ops.convattn
    return FusedOps(ops.cbam_forward.default, ops.cbam_backward.default)


_state: dict[str, FusedOps | None] = {}


def load_fused() -> FusedOps | None:
    """The compiled extension, building it on first call; ``None`` if it cannot be built."""
    if "ext" in _state:
        return _state["ext"]
    with _lock:
        if "ext" not in _state:
            ext = None
            if os.environ.get("CONVATTN_NO_BUILD", "") in ("", "0"):
                try:
                    ext = _build()
                except Exception as e:  # compiler missing, build error, no write access...
                    warnings.warn(
                        f"convattn: could not build the fused CPU kernels ({type(e).__name__}: "
                        f"{str(e)[:300]}); using the eager implementation",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            _state["ext"] = ext
    return _state["ext"]
