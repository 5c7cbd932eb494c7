"""Subcommands of the ``convattn`` CLI; each module defines ``register(subparsers)``."""

from . import benchmark, cam, convert, demo, evaluate, models, report, train

COMMANDS = [demo, train, evaluate, cam, report, models, convert, benchmark]
