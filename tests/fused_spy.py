"""A spy on the fused operators: the tests count (or record) their calls, so that none can
pass by running the eager path twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convattn.fused import build, ops
from convattn.fused.ops import ForwardArgs


def spy_fused(monkeypatch: Any, summary: Callable[[ForwardArgs], Any] | None = None) -> dict | None:
    """Route the operators through counters; ``None`` if the extension is unavailable.

    Returns ``{"forward": n, "backward": n}``, or with ``summary`` the list of
    ``summary(args)`` of every forward call as ``"forward"``.
    """
    real = ops.fused_ops()
    if real is None:
        return None
    seen: dict[str, Any] = {"forward": [] if summary else 0, "backward": 0}

    def forward(*args: Any) -> Any:
        if summary is None:
            seen["forward"] += 1
        else:
            seen["forward"].append(summary(ForwardArgs(*args)))
        return real.forward(*args)

    def backward(*args: Any) -> Any:
        seen["backward"] += 1
        return real.backward(*args)

    monkeypatch.setattr(ops, "load_fused", lambda: build.FusedOps(forward, backward))
    return seen
