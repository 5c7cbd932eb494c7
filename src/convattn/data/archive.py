"""Extract ``.tar``/``.tar.gz``/``.tgz`` datasets once into the cache, safely.

An archive is extracted into a temporary folder beside its cache entry; a marker file
recording the archive's size, modification time (and optionally SHA-256) and the number
of extracted files is written into it last, atomically, and the folder is then renamed
into place. A later call finds the marker, checks it against the archive and counts the
files, and skips extraction; a crash at any point leaves no marker (or no entry), so the
work is redone. Members that would land outside the destination (absolute paths, ``..``,
links pointing out, device files) are refused with an error naming them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from .cache import atomic_write, file_lock, resolve_cache_dir

__all__ = ["ARCHIVE_SUFFIXES", "MARKER", "extract_archive", "is_archive"]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MARKER = ".convattn-extracted.json"


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a tar archive this module extracts (by its suffix)."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _stem(archive: Path) -> str:
    name = archive.name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _count_files(root: Path) -> int:
    """Every non-directory entry under ``root`` except the marker."""
    count, stack = 0, [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.name != MARKER:
                    count += 1
    return count


def _is_complete(target: Path, expected: dict[str, Any]) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if any(marker.get(key) != value for key, value in expected.items()):
        return False
    return marker.get("files") == _count_files(target)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse members that could write outside the destination folder."""
    parts = PurePosixPath(member.name).parts
    bad = member.name.startswith(("/", "\\")) or ".." in parts
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        joined = link if member.islnk() else PurePosixPath(*parts[:-1], *link.parts)
        depth = 0
        for part in joined.parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            bad = bad or depth < 0
        bad = bad or link.is_absolute()
    if bad or member.isdev():
        raise ValueError(
            f"unsafe member {member.name!r} in {archive} (absolute path, '..', a link "
            "leading outside the archive's folder, or a device file); refusing to extract"
        )


def _extract(archive: Path, dest: Path, progress: bool) -> None:
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    size = archive.stat().st_size
    with (
        open(archive, "rb") as raw,
        tarfile.open(fileobj=raw, mode="r:*") as tar,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"extracting {archive.name}",
            disable=None if progress else True,
        ) as bar,
    ):
        for member in tar:  # streamed: compressed archives are read once, front to back
            _check_member(member, archive)
            tar.extract(member, dest, **safe)
            bar.update(raw.tell() - bar.n)


def extract_archive(
    archive: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    checksum: bool = False,
    progress: bool = True,
) -> Path:
    """Extract ``archive`` into the cache once and return the extracted folder.

    Args:
        archive: a ``.tar``, ``.tar.gz``/``.tgz`` (or ``.bz2``/``.xz``) file.
        cache_dir: cache root (default ``$CONVATTN_CACHE`` or ``~/.cache/convattn/datasets``);
            the entry is ``<cache>/extracted/<name>-<hash of the archive's path>``.
        checksum: also record and check the archive's SHA-256 (reads it in full).
        progress: show a progress bar (on a terminal).

    Raises:
        FileNotFoundError: the archive does not exist.
        ValueError: the archive holds an unsafe member (nothing is kept).
    """
    path = Path(archive).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"dataset archive not found: {path}")
    if not is_archive(path):
        raise ValueError(
            f"not a tar archive: {path}; valid suffixes: {', '.join(ARCHIVE_SUFFIXES)}"
        )
    stat = path.stat()
    expected: dict[str, Any] = {"archive": path.name, "size": stat.st_size}
    expected["mtime_ns"] = stat.st_mtime_ns
    if checksum:
        expected["sha256"] = _sha256(path)
    parent = resolve_cache_dir(cache_dir) / "extracted"
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / f"{_stem(path)}-{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if _is_complete(target, expected):
        return target
    with file_lock(parent / f".{target.name}.lock"):
        if _is_complete(target, expected):  # another process finished while we waited
            return target
        for stale in parent.glob(f".{target.name}.*.partial"):  # left by a crash
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=parent))
        try:
            _extract(path, tmp, progress)
            marker = {**expected, "files": _count_files(tmp)}
            atomic_write(tmp / MARKER, lambda p: p.write_text(json.dumps(marker, indent=1)))
            if target.exists():  # incomplete or out of date
                shutil.rmtree(target)
            tmp.chmod(0o755)  # mkdtemp makes it private
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
