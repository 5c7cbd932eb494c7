"""Progress of long loops: a live bar on a terminal, sparse log lines elsewhere.

On a terminal the bar redraws in place (tqdm). When the output is a file or a pipe (CI,
``nohup``, cluster jobs) redraws would fill the log with carriage returns, so the loop
instead logs one line at most every ``interval`` seconds (30 by default); the engine
logs its own line per epoch in either case.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

__all__ = ["Progress"]

log = logging.getLogger("convattn")


class Progress:
    """A progress display of ``total`` steps, or nothing when ``enabled`` is false.

    Args:
        total: steps in the loop.
        desc: what the loop is ("epoch 3/90", "eval").
        enabled: show anything at all.
        initial: steps already done (a resumed epoch).
        interval: seconds between log lines when the output is not a terminal.
        live: draw a bar (default: when standard error is a terminal).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        initial: int = 0,
        interval: float = 30.0,
        live: bool | None = None,
    ) -> None:
        self.total, self.desc, self.done = total, desc, initial
        self.enabled, self.interval = enabled, interval
        live = sys.stderr.isatty() if live is None else live
        self.bar = (
            tqdm(total=total, initial=initial, desc=desc, leave=False) if enabled and live else None
        )
        self._last = time.monotonic()

    def update(self, **postfix: Any) -> None:
        """One more step done; ``postfix`` are the figures to show beside the count."""
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update()
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            figures = "  ".join(f"{k} {v}" for k, v in postfix.items())
            log.info("%s: step %d/%d  %s", self.desc, self.done, self.total, figures)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
