"""Training and evaluation: recipes, loops, checkpoints, distributed data parallelism."""

from .config import Config, load_config, save_config
from .evaluate import evaluate, precise_bn
from .evaluate_checkpoint import evaluate_weights
from .fit import fit
from .train import StopRequested, train_one_epoch

__all__ = [
    "Config",
    "StopRequested",
    "evaluate",
    "evaluate_weights",
    "fit",
    "load_config",
    "precise_bn",
    "save_config",
    "train_one_epoch",
]
