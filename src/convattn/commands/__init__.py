"""Subcommands of the ``convattn`` CLI; each module defines ``register(subparsers)``."""

from . import benchmark, cam, convert, demo, detect, evaluate, models, report, sweep, train

COMMANDS = [demo, train, sweep, evaluate, detect, cam, report, models, convert, benchmark]
