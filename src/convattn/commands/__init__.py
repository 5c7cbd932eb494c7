"""Subcommands of the ``convattn`` CLI; each module defines ``register(subparsers)``."""

from . import benchmark, cam, convert, demo, evaluate, models, report, sweep, train

COMMANDS = [demo, train, sweep, evaluate, cam, report, models, convert, benchmark]
