"""The report's pictures (matplotlib, drawn off-screen): training curves, Grad-CAM grids in
the CBAM paper's Figure 4 layout, CBAM's spatial maps stage by stage, and rows of images
with boxes drawn (detection).

CAMs are drawn over the image with a perceptual colour map ("inferno": lightness rises
with the value, so the map reads the same in grey), half transparent.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display: draw into memory

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "CAM_COLORMAP",
    "CamRow",
    "boxes_grid",
    "cam_grid",
    "curves_figure",
    "maps_grid",
    "to_png",
]

CAM_COLORMAP = "inferno"


def to_png(fig: Figure, path: str | None = None, *, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (also written to ``path`` when given); closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def curves_figure(runs: Sequence[tuple[str, list[dict]]]) -> Figure:
    """Loss and top-1 error per epoch (training solid, validation dashed), a colour a run."""
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, (name, rows) in enumerate(runs):
        color = f"C{i % 10}"
        for ax, key in ((ax_loss, "loss"), (ax_err, "top1_err")):
            for split, style in (("train", "-"), ("val", "--")):
                pts = [
                    (r["epoch"], r[f"{split}_{key}"])
                    for r in rows
                    if r.get(f"{split}_{key}") is not None
                ]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, style, color=color, marker=".", label=f"{name} ({split})")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_err.set(xlabel="epoch", ylabel="top-1 error (%)", title="top-1 error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_err.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class CamRow:
    """One model's row of a Grad-CAM grid: its name, maps (N, H, W) in [0, 1], and the
    caption under each image (e.g. "snow leopard, P = 0.98")."""

    label: str
    cams: torch.Tensor
    captions: Sequence[str]


def _show(ax, image: torch.Tensor) -> None:
    ax.imshow(image.permute(1, 2, 0).cpu().numpy())  # (3, H, W) uint8 -> (H, W, 3)
    ax.set_xticks([]), ax.set_yticks([])


def cam_grid(images: torch.Tensor, rows: Sequence[CamRow], titles: Sequence[str] = ()) -> Figure:
    """The paper's layout: the input images across the top, then each model's Grad-CAM
    over them with its caption underneath; ``images`` are ``uint8`` (N, 3, H, W)."""
    n = images.shape[0]
    fig, axes = plt.subplots(
        1 + len(rows), n, figsize=(1.75 * n, 1.95 * (1 + len(rows))), squeeze=False
    )
    for j in range(n):
        _show(axes[0][j], images[j])
        if j < len(titles):
            axes[0][j].set_title(titles[j], fontsize=7)
        for i, row in enumerate(rows, start=1):
            ax = axes[i][j]
            _show(ax, images[j])
            ax.imshow(row.cams[j].cpu().numpy(), cmap=CAM_COLORMAP, alpha=0.5, vmin=0, vmax=1)
            ax.set_xlabel(row.captions[j], fontsize=7)
    axes[0][0].set_ylabel("input", fontsize=8)
    for i, row in enumerate(rows, start=1):
        axes[i][0].set_ylabel(row.label, fontsize=8)
    fig.tight_layout()
    return fig


def maps_grid(images: torch.Tensor, maps: dict[str, torch.Tensor]) -> Figure:
    """Each image, then its spatial attention map at every named stage (N, 1, h, w) each,
    upsampled to the image's size. Gates start at 0.5 and move slowly, so each map is
    drawn from its own minimum (dark) to its maximum (light), with the range under it."""
    n, size = images.shape[0], images.shape[-2:]
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.75 * cols, 1.95 * n), squeeze=False)
    for i in range(n):
        _show(axes[i][0], images[i])
        for j, (name, m) in enumerate(maps.items(), start=1):
            up = torch.nn.functional.interpolate(m[i : i + 1].float(), size=size, mode="bilinear")
            lo, hi = float(m[i].min()), float(m[i].max())
            ax = axes[i][j]
            ax.imshow(up[0, 0].cpu().numpy(), cmap=CAM_COLORMAP, vmin=lo, vmax=max(hi, lo + 1e-6))
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel(f"Ms {lo:.3f} to {hi:.3f}", fontsize=7)
            if i == 0:
                ax.set_title(name, fontsize=7)
    axes[0][0].set_title("input", fontsize=7)
    fig.tight_layout()
    return fig


def boxes_grid(rows: Sequence[tuple[str, Sequence[torch.Tensor]]]) -> Figure:
    """Rows of pictures with boxes drawn, ``uint8`` (3, H, W) each, the row's name at its
    left (the ground truth first, then one row per detector)."""
    n = max(len(pics) for _, pics in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.9 * n, 1.95 * len(rows)), squeeze=False)
    for i, (label, pics) in enumerate(rows):
        for j in range(n):
            if j < len(pics):
                _show(axes[i][j], pics[j])
            else:
                axes[i][j].axis("off")
        axes[i][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig
