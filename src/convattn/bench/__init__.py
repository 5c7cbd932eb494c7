"""Benchmarks that ship with the package (``convattn benchmark``)."""

from .module import CANDIDATES, ModuleBench, bench_module, format_module_table, saved_bytes

__all__ = ["CANDIDATES", "ModuleBench", "bench_module", "format_module_table", "saved_bytes"]
