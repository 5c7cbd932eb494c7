"""Subcommands of the ``convattn`` CLI; each module defines ``register(subparsers)``."""

from . import benchmark, convert, demo, evaluate, models, train

COMMANDS = [demo, train, evaluate, models, convert, benchmark]
