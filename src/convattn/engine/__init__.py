"""Training and evaluation: recipes, loops, checkpoints, distributed data parallelism.

``config`` (the typed recipe), ``recipes`` (reading, overriding and saving it),
``setup`` (data, model, optimiser, schedule, EMA, DDP from a recipe), ``loop`` (one
epoch), ``evaluate``, ``checkpoint`` (all training state),
``resume`` (which options may change), ``run`` (the run folder and its summary),
``runtime`` (device, threads, seeding), ``distributed``, ``job`` (a run in progress, also
for detection) and ``fit`` (all of it).
"""

from .config import Config
from .evaluate import evaluate, precise_bn
from .evaluate_checkpoint import evaluate_weights
from .fit import StopRequested, fit
from .loop import EpochResult, StepOptions, train_one_epoch
from .recipes import load_config, save_config
from .resume import resume_config

__all__ = [
    "Config",
    "EpochResult",
    "StepOptions",
    "StopRequested",
    "evaluate",
    "evaluate_weights",
    "fit",
    "load_config",
    "precise_bn",
    "resume_config",
    "save_config",
    "train_one_epoch",
]
