"""The run folder: where a training run leaves everything a person or a script reads.

``<output>/<name>/`` holds ``config.yaml`` (the resolved recipe), ``dataset.json`` (the
dataset's name, class names, normalisation and image size, for tools that read the run
without its data), ``train.log``,
``metrics.jsonl`` (one JSON object per epoch), ``checkpoint.pt`` (the latest, for
``--resume``), ``best.safetensors`` (the best weights), ``summary.json`` and
``summary.md`` (the paper-style table) and, optionally, TensorBoard event files.
Only the main process writes, holding the folder's lock (``run.lock``, see
:mod:`convattn.engine.lock`) from start to end, so two processes never train one run.
A new run never reuses a folder that holds a run; a resumed one appends to its log and
metrics and never rewrites its ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..data.cache import atomic_write
from .config import Config
from .lock import FolderLock
from .recipes import save_config

__all__ = [
    "RUN_FILES",
    "START_FILES",
    "SUMMARY_COLUMNS",
    "Run",
    "clear_start",
    "format_table",
    "read_metrics",
    "write_summary",
]

#: Files whose presence means a folder holds a run.
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt")
#: What a start leaves in a folder before its first checkpoint (cleared on a new start).
START_FILES = ("config.yaml", "metrics.jsonl", "dataset.json", "best.safetensors",
               "summary.json", "summary.md")  # fmt: skip

log = logging.getLogger("convattn")


class _Console(logging.StreamHandler):
    """Log lines to whatever ``sys.stderr`` is when they are written (it may be replaced
    after the handler was made: notebooks, captured output)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler sets it; sys.stderr wins
        pass


class Run:
    """Files of one run; every method is a no-op on processes other than the main one."""

    def __init__(
        self,
        cfg: Config,
        *,
        main: bool = True,
        folder: str | Path | None = None,
        resume: bool = False,
    ) -> None:
        self.main = main
        if folder is None:
            name = cfg.run.name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
            folder = Path(cfg.run.output) / name
        self.dir = Path(folder)
        self.tb: Any = None
        if not main:
            return
        self._lock = FolderLock(self.dir).__enter__()  # raises RunLocked if in use
        try:
            self._open(cfg, resume)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, cfg: Config, resume: bool) -> None:
        """Check the folder, write its config and attach the log file (main process)."""
        held = [f for f in RUN_FILES if (self.dir / f).exists()]
        if held and not resume:
            raise ValueError(
                f"run folder {self.dir} already holds a run ({', '.join(held)}); resume it "
                f"with --resume {self.dir}, or choose another run.name or run.output"
            )
        if not (self.dir / "config.yaml").exists():
            save_config(cfg, self.dir / "config.yaml")
        _cut_partial_line(self.dir / "metrics.jsonl")
        handler = logging.FileHandler(self.dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        self._handler, self._console, self._level = handler, None, log.level
        if not any(isinstance(h, _Console) for h in log.handlers):
            self._console = _Console()
            self._console.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(self._console)
        log.setLevel(logging.INFO)
        if cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; run.tensorboard is ignored")

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.safetensors"

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line (and TensorBoard scalars)."""
        if not self.main:
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            step = record.get("epoch", 0)
            for k, v in record.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.tb.add_scalar(k, v, step)

    def describe_dataset(self, info: Any) -> None:
        """Write ``dataset.json`` from a :class:`~convattn.data.DatasetInfo` (once)."""
        path = self.dir / "dataset.json"
        if self.main and not path.exists():
            path.write_text(json.dumps(dataclasses.asdict(info), indent=2) + "\n")

    def append_missing(self, record: dict[str, Any]) -> None:
        """Append ``record`` unless ``metrics.jsonl`` already holds its epoch (a run
        killed between writing its checkpoint and its metrics line)."""
        if not self.main or not record:
            return
        rows = read_metrics(self.dir)
        if not rows or rows[-1].get("epoch", 0) < record["epoch"]:
            self.log_metrics(record)

    def write_summary(self, rows: list[dict[str, Any]]) -> str:
        """Save ``summary.json`` and ``summary.md``; return the Markdown table."""
        return write_summary(self.dir, rows) if self.main else format_table(rows)

    def close(self) -> None:
        if not self.main:
            return
        if self.tb is not None:
            self.tb.close()
        log.removeHandler(self._handler)
        self._handler.close()
        if self._console is not None:  # leave the logger as it was found
            log.removeHandler(self._console)
        log.setLevel(self._level)
        self._lock.release()


#: (heading, key, format) of the summary table's columns: the paper's Table 4 and images/s.
SUMMARY_COLUMNS = [
    ("model", "model", "{}"),
    ("params (M)", "params_m", "{:.2f}"),
    ("GFLOPs", "gmacs", "{:.3f}"),
    ("top-1 err (%)", "top1_err", "{:.2f}"),
    ("top-5 err (%)", "top5_err", "{:.2f}"),
    ("train img/s", "train_images_per_s", "{:.0f}"),
    ("eval img/s", "eval_images_per_s", "{:.0f}"),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table in the layout of the CBAM paper's Table 4 (plus throughput)."""
    lines = ["| " + " | ".join(c[0] for c in SUMMARY_COLUMNS) + " |"]
    lines.append("| --- |" + " ---: |" * (len(SUMMARY_COLUMNS) - 1))
    for row in rows:
        cells = []
        for _, key, fmt in SUMMARY_COLUMNS:
            v = row.get(key)
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(folder: str | Path, rows: list[dict[str, Any]]) -> str:
    """Write ``summary.json`` and ``summary.md`` (the table) into ``folder``, each
    atomically (a reader never sees half a file); return the table."""
    folder = Path(folder)
    table = format_table(rows)
    text = json.dumps(rows, indent=2) + "\n"
    atomic_write(folder / "summary.md", lambda tmp: tmp.write_text(table + "\n"))
    atomic_write(folder / "summary.json", lambda tmp: tmp.write_text(text))  # last: "finished"
    return table


def clear_start(folder: Path) -> None:
    """Remove what an attempt that never reached a checkpoint left in ``folder`` (its
    log stays), saying so when that includes results. The caller holds its lock."""
    results = [n for n in ("summary.json", "metrics.jsonl") if (folder / n).is_file()]
    if results:
        log.warning("%s: no checkpoint.pt, so the run starts over; removing its %s",
                    folder, " and ".join(results))  # fmt: skip
    for name in START_FILES:
        (folder / name).unlink(missing_ok=True)


def _cut_partial_line(path: Path) -> None:
    """Drop what follows the last newline of ``path`` (a record cut short by a kill), so
    that the records appended next start on a line of their own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        log.warning("%s: a cut-off last record, removed", path)
        with open(path, "r+b") as f:
            f.truncate(len(whole))


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (empty if there is none). A last line cut
    short (the process killed while appending it) is left out with a warning; a bad line
    before it is an error naming the file and line."""
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [(i, s) for i, s in enumerate(path.read_text().splitlines(), 1) if s.strip()]
    records = []
    for i, line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i != lines[-1][0]:
                raise ValueError(f"{path}:{i}: not a JSON record ({err})") from None
            log.warning("%s:%d: a cut-off last record, left out", path, i)
    return records
