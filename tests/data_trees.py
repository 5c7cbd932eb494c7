"""Tiny generated image trees for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def noise(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_tree(root: Path, size: int = 12) -> dict[str, Path]:
    """train/{cat,dog}, val/{cat,dog}: PNG and JPEG in RGB, L, P and CMYK, plus a file that
    is not an image and a truncated JPEG."""
    files = {}
    for split, n in (("train", 3), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(noise(size, 10 * c + i)).save(folder / f"{i}.png")
    grey = Image.fromarray(noise(size, 99)[:, :, 0], mode="L")
    grey.save(files.setdefault("grey", root / "train" / "cat" / "grey.png"))
    rgb = Image.fromarray(noise(size, 98))
    rgb.convert("P").save(files.setdefault("palette", root / "train" / "dog" / "pal.png"))
    rgb.convert("CMYK").save(files.setdefault("cmyk", root / "train" / "dog" / "cmyk.jpg"))
    files["corrupt"] = root / "train" / "cat" / "corrupt.jpg"
    files["corrupt"].write_bytes(b"this is not an image" * 10)
    buf = root / "full.jpg"
    Image.fromarray(noise(64, 5)).save(buf, quality=95)
    files["truncated"] = root / "train" / "dog" / "truncated.jpg"
    files["truncated"].write_bytes(buf.read_bytes()[:700])  # header intact, data cut
    buf.unlink()
    return files
