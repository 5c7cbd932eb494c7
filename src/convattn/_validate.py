"""Argument checks shared by every part of convattn (layers, data, engine).

Bad arguments raise ``ValueError``/``TypeError`` naming the argument and the valid values,
never ``assert`` (which ``python -O`` strips).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_choice", "check_odd_kernel", "check_positive"]


def check_positive(name: str, value: int) -> int:
    """Return ``value`` if it is an ``int`` >= 1, else raise ``ValueError``/``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_odd_kernel(kernel_size: int) -> int:
    """Kernel sizes must be odd and positive so that 'same' padding keeps H x W."""
    check_positive("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (same padding keeps H x W), got {kernel_size}")
    return kernel_size


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the valid ones."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, choices))}")
    return value
