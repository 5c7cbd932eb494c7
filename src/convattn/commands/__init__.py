"""Subcommands of the ``convattn`` CLI; each module defines ``register(subparsers)``."""

from . import demo

COMMANDS = [demo]
