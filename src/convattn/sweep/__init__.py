"""Sweeps: grids of models x attention variants x seeds, each an ordinary training run.

``grid`` (grid files, their presets and variants, expanded into runs keyed by their
effective config), ``runner`` (locks, skipping finished runs, resuming interrupted ones,
recording failures, sharding, job-queue commands), ``ray_backend`` (the runs as Ray
tasks; Ray is an extra) and ``summary`` (per-grid tables of mean and spread over seeds,
differences against the baseline, plots).
"""

from .grid import Grid, RunSpec, effective_config, expand, grid_path, list_grids, load_grid, run_key

__all__ = [
    "Grid",
    "RunSpec",
    "effective_config",
    "expand",
    "grid_path",
    "list_grids",
    "load_grid",
    "run_key",
]
