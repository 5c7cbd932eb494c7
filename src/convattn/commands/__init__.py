"""Subcommands of the ``convattn`` CLI; each module defines ``register(subparsers)``."""

from . import convert, demo, models

COMMANDS = [demo, models, convert]
