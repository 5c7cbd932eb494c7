"""Reports on trained runs: a self-contained HTML page (``convattn report``) and Grad-CAM
grids of images (``convattn cam``), built on :mod:`convattn.explain`."""

from .figures import CamRow, cam_grid, curves_figure, maps_grid, to_png
from .html import build_report, explain_rows
from .runs import Explained, RunView, load_images, read_run, sample_val_images

__all__ = [
    "CamRow",
    "Explained",
    "RunView",
    "build_report",
    "cam_grid",
    "curves_figure",
    "explain_rows",
    "load_images",
    "maps_grid",
    "read_run",
    "sample_val_images",
    "to_png",
]
