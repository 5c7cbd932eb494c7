"""Reports on trained runs: a self-contained HTML page (``convattn report``) of
classification and detection runs, and Grad-CAM grids of images (``convattn cam``),
built on :mod:`convattn.explain` and :mod:`convattn.detection`."""

from .detection import DetectionRunView, detection_rows, is_detection_run, read_detection_run
from .figures import CamRow, boxes_grid, cam_grid, curves_figure, maps_grid, to_png
from .html import build_report, explain_rows
from .runs import Explained, RunView, load_images, read_run, sample_val_images

__all__ = [
    "CamRow",
    "DetectionRunView",
    "Explained",
    "RunView",
    "boxes_grid",
    "build_report",
    "cam_grid",
    "curves_figure",
    "detection_rows",
    "explain_rows",
    "is_detection_run",
    "load_images",
    "maps_grid",
    "read_detection_run",
    "read_run",
    "sample_val_images",
    "to_png",
]
