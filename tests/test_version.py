"""The package's version and the commit of the sources it runs from (a run's record)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from convattn._version import SOURCE_ROOT, __version__, code_record, source_commit


def test_the_version_is_the_installed_packages():
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)


@pytest.mark.skipif(
    shutil.which("git") is None or not (SOURCE_ROOT / ".git").exists(),
    reason="the sources are not a git checkout",
)
def test_the_source_commit_is_the_checkouts_head():
    head = subprocess.run(["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    commit = source_commit()
    assert commit is not None and re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", commit)
    assert head.startswith(commit[:12])
    assert code_record() == f"convattn {__version__} at {commit}"


def test_outside_a_checkout_there_is_no_commit(tmp_path):
    assert source_commit(tmp_path) is None
