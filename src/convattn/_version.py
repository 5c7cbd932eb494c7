"""The installed package's version (one source for the CLI, checkpoints and metadata), and
the git commit of the source tree it runs from, for the records of a run."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("convattn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: The checkout that holds this package's sources (``src/convattn/..``).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def source_commit(root: Path = SOURCE_ROOT) -> str | None:
    """The commit the package's sources are at, 12 hex digits, with ``+dirty`` when
    ``src/`` has uncommitted changes; ``None`` outside a git checkout or without git."""
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True)  # fmt: skip
        return done.stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def code_record() -> str:
    """``"convattn <version> at <commit>"`` (without the commit outside a checkout): what a
    run records as the code that trained it. The commit is read once per process."""
    commit = source_commit()
    return f"convattn {__version__}" + (f" at {commit}" if commit else "")
