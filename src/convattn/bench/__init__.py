"""Benchmarks that ship with the package (``convattn benchmark``)."""

from .module import (
    CANDIDATES,
    PRECISIONS,
    ModuleBench,
    bench_module,
    format_module_table,
    saved_bytes,
    time_step,
)

__all__ = [
    "CANDIDATES",
    "PRECISIONS",
    "ModuleBench",
    "bench_module",
    "format_module_table",
    "saved_bytes",
    "time_step",
]
