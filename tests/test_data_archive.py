"""Archives are extracted once into the cache, redone after a crash or a change, and
members that would escape the destination are refused."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from convattn.data import archive as archive_mod
from convattn.data import extract_archive, is_archive
from convattn.data.archive import MARKER


def _tree(root: Path) -> Path:
    for split, cls, name in [("train", "a", "0"), ("train", "b", "1"), ("val", "a", "2")]:
        folder = root / "set" / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.txt").write_text(name)
    return root / "set"


def _archive(tmp_path: Path, suffix: str = ".tar.gz") -> Path:
    src = _tree(tmp_path / "src")
    path = tmp_path / f"set{suffix}"
    with tarfile.open(path, "w:gz" if suffix != ".tar" else "w") as tar:
        tar.add(src, arcname="set")
    return path


def _evil_archive(tmp_path: Path, member: tarfile.TarInfo) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("set/train/a/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        tar.addfile(member, io.BytesIO(b"x" * member.size))
    return path


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_extracts_the_tree_and_writes_a_marker(tmp_path, suffix):
    out = extract_archive(_archive(tmp_path, suffix), tmp_path / "cache", progress=False)
    assert (out / "set" / "train" / "b" / "1.txt").read_text() == "1"
    marker = json.loads((out / MARKER).read_text())
    assert marker["files"] == 3 and marker["archive"] == f"set{suffix}"
    assert out.parent == tmp_path / "cache" / "extracted"


def test_second_call_does_not_extract_again(tmp_path, monkeypatch):
    arch = _archive(tmp_path)
    out = extract_archive(arch, tmp_path / "cache", progress=False)
    marker_mtime = (out / MARKER).stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(archive_mod, "_extract", fail)
    assert extract_archive(arch, tmp_path / "cache", progress=False) == out
    assert (out / MARKER).stat().st_mtime_ns == marker_mtime


def test_a_crash_during_extraction_leaves_nothing_and_is_redone(tmp_path, monkeypatch):
    arch = _archive(tmp_path)
    real = archive_mod._extract

    def crash(archive, dest, progress):
        real(archive, dest, progress)  # files written, marker not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(archive_mod, "_extract", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(arch, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache" / "extracted").glob("set-*")) == []
    monkeypatch.setattr(archive_mod, "_extract", real)
    out = extract_archive(arch, tmp_path / "cache", progress=False)
    assert (out / "set" / "val" / "a" / "2.txt").is_file()


def test_an_entry_without_marker_or_with_missing_files_is_redone(tmp_path):
    arch = _archive(tmp_path)
    out = extract_archive(arch, tmp_path / "cache", progress=False)
    victim = out / "set" / "train" / "a" / "0.txt"
    victim.unlink()  # e.g. a half-deleted cache
    assert extract_archive(arch, tmp_path / "cache", progress=False) == out
    assert victim.is_file()
    (out / MARKER).unlink()  # e.g. killed by an older, non-atomic extractor
    (out / "junk.txt").write_text("stale")
    extract_archive(arch, tmp_path / "cache", progress=False)
    assert (out / MARKER).is_file() and not (out / "junk.txt").exists()


def test_leftover_partial_folders_from_a_crash_are_removed(tmp_path):
    arch = _archive(tmp_path)
    out = extract_archive(arch, tmp_path / "cache", progress=False)
    partial = out.parent / f".{out.name}.abc.partial"
    partial.mkdir()
    (out / MARKER).unlink()
    extract_archive(arch, tmp_path / "cache", progress=False)
    assert not partial.exists()


def test_a_changed_archive_is_extracted_again(tmp_path):
    arch = _archive(tmp_path)
    out = extract_archive(arch, tmp_path / "cache", progress=False)
    before = json.loads((out / MARKER).read_text())
    os.utime(arch, ns=(before["mtime_ns"] + 10**9, before["mtime_ns"] + 10**9))
    extract_archive(arch, tmp_path / "cache", progress=False)
    assert json.loads((out / MARKER).read_text())["mtime_ns"] == before["mtime_ns"] + 10**9


def test_checksum_is_recorded_when_asked(tmp_path):
    out = extract_archive(_archive(tmp_path), tmp_path / "cache", checksum=True, progress=False)
    assert len(json.loads((out / MARKER).read_text())["sha256"]) == 64


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../escaped.txt"),
        _member("set/../../escaped.txt"),
        _member("/tmp/escaped-absolute.txt"),
        _member("set/link", tarfile.SYMTYPE, "../../escaped.txt"),
        _member("set/abs-link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("set/hard", tarfile.LNKTYPE, "../outside"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink-out"],
)
def test_members_escaping_the_destination_are_refused(tmp_path, member):
    arch = _evil_archive(tmp_path, member)
    with pytest.raises(ValueError, match="unsafe member"):
        extract_archive(arch, tmp_path / "cache", progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "cache" / "escaped.txt").exists()
    left = [p.name for p in (tmp_path / "cache" / "extracted").iterdir()]
    assert all(name.endswith(".lock") for name in left), left  # no entry, no partial folder


def test_cache_folder_comes_from_the_environment_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVATTN_CACHE", str(tmp_path / "env-cache"))
    out = extract_archive(_archive(tmp_path), progress=False)
    assert out.parent == tmp_path / "env-cache" / "extracted"


def test_missing_or_unsupported_archives_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tar\.gz"):
        extract_archive(tmp_path / "nope.tar.gz", tmp_path / "cache")
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"\.tar\.gz"):
        extract_archive(tmp_path / "data.zip", tmp_path / "cache")
    assert is_archive("x.TGZ") and is_archive("a/b.tar") and not is_archive("a/b.zip")
