"""The installed package's version (one source for the CLI, checkpoints and metadata)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("convattn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
