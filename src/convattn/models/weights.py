"""Loading weights: the CBAM authors' checkpoints, torchvision backbones, our own files.

Formats (detected from the keys, never from the file name alone):

- ``authors``: the CBAM authors' released ResNet+CBAM checkpoints, a dict with a
  ``state_dict`` whose keys carry DataParallel's ``module.`` prefix and name the gates
  ``<block>.cbam.ChannelGate.mlp.{1,3}.*`` (the two Linear layers) and
  ``<block>.cbam.SpatialGate.spatial.{conv,bn}.*``. Their backbone keys are torchvision's
  and their spatial pooling order (max, then mean) is ours, so only the gate names change.
  The other entries beside ``state_dict`` (``epoch``, ``arch``, ``best_prec1``,
  ``optimizer``) are ignored.
- ``torchvision``: a torchvision ResNet/ResNeXt/WideResNet state dict. Backbone weights
  load; attention layers keep their initialisation and are listed in the report.
- ``convattn``: our checkpoints (a dict with ``model``) or a plain state dict, as ``.pt``
  or ``.safetensors``.

Files are read with safetensors or with :func:`read_torch_file`: ``torch.load`` with
``weights_only=True``, of the zip or the legacy (PyTorch < 1.6) serialisation. No pickled
code runs; a pickle holding other Python objects is refused, and so is a damaged file or
one that is no checkpoint, each with a one-line :class:`CheckpointError` naming the file
(for a refused pickle, with how to convert it if trusted).

Files saved before PyTorch 0.4.1, such as the authors' 2018 checkpoints, have no BatchNorm
``num_batches_tracked`` counters: as ``load_state_dict`` does, the model keeps its own
(:attr:`LoadReport.counters_kept`). A model without a classifier (``features_only``,
e.g. a detection backbone) ignores the file's classifier ``fc.*``
(:attr:`LoadReport.head_skipped`). Any other mismatch raises :class:`CheckpointError`
listing the offending keys unless ``strict=False`` asks for a partial load.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..layers import ATTENTIONS

__all__ = [
    "CheckpointError",
    "LoadReport",
    "attention_keys",
    "convert_authors_keys",
    "detect_format",
    "load_checkpoint",
    "read_state_dict",
    "read_torch_file",
]

log = logging.getLogger(__name__)

_AUTHORS_RENAMES = [
    (re.compile(r"\.cbam\.ChannelGate\.mlp\.1\."), ".attn.channel.fc1."),
    (re.compile(r"\.cbam\.ChannelGate\.mlp\.3\."), ".attn.channel.fc2."),
    (re.compile(r"\.cbam\.SpatialGate\.spatial\.conv\."), ".attn.spatial.conv."),
    (re.compile(r"\.cbam\.SpatialGate\.spatial\.bn\."), ".attn.spatial.bn."),
]
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """The checkpoint cannot be read or does not fit the model (a one-line message)."""


@dataclass
class LoadReport:
    """What a load did: the detected format and the keys loaded, missing or skipped."""

    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    #: ``num_batches_tracked`` counters of loaded BatchNorms that the file lacks (saved
    #: before PyTorch 0.4.1); the model keeps its own, as ``load_state_dict`` does.
    counters_kept: list[str] = field(default_factory=list)
    #: classifier keys of the file that a model without a classifier ignores.
    head_skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.format} checkpoint: {len(self.loaded)} tensors loaded"]
        if self.counters_kept:
            parts.append(f"{len(self.counters_kept)} BatchNorm counters not in the file (kept)")
        if self.head_skipped:
            parts.append(f"classifier ignored ({', '.join(self.head_skipped)})")
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {name} ({shown})")
        return "; ".join(parts)


def _is_url(path: str | Path) -> bool:
    return urlparse(str(path)).scheme in ("http", "https", "file", "ftp")


def _fetch(url: str) -> Path:
    """Download ``url`` once into the torch hub cache and return the local file."""
    name = Path(urlparse(url).path).name or "checkpoint.pt"
    dest = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    return dest


def read_torch_file(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load`` a local file onto the CPU with ``weights_only=True`` (``mmap``: map
    the tensors of a zip-format file instead of reading them).

    Raises:
        FileNotFoundError: there is no such file.
        CheckpointError: in one line naming the file, when it holds Python objects that
            would run code when unpickled (refused) or is no readable ``torch.save`` file.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError:
        raise
    except Exception as err:  # damaged files raise many kinds (EOFError, KeyError, ...)
        raise _load_error(file, err) from None


def _kind_of_file(file: Path) -> str:
    """What the first bytes say the file is."""
    with file.open("rb") as f:
        head = f.read(4)
    if not head:
        return "an empty file"
    if head == b"PK\x03\x04":
        return "a torch.save zip archive"
    if head[0] == pickle.PROTO[0] and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        return f"a pickle (protocol {head[1]})"
    return "neither a zip archive nor a pickle"


def _resave_hint(file: Path) -> str:
    """How to turn a trusted pickle into a plain weights file."""
    load = f"torch.load({str(file)!r}, weights_only=False)"
    return (
        "if you trust it, keep only its tensors: "
        f"python -c \"import torch; torch.save({load}['state_dict'], 'weights.pt')\" "
        "(name the entry that holds them, or call .state_dict() on a pickled model), "
        "then load or convert weights.pt"
    )


def _load_error(file: Path, err: Exception) -> CheckpointError:
    """One line for a file ``torch.load(weights_only=True)`` refused or could not read."""
    kind, msg = _kind_of_file(file), str(err)
    if not kind.startswith(("a torch.save", "a pickle")):
        return CheckpointError(f"{file}: not a PyTorch checkpoint: {kind}")
    found = re.search(r"GLOBAL (\S+)", msg)
    if isinstance(err, pickle.UnpicklingError) and found:
        return CheckpointError(
            f"{file}: refused to unpickle: {kind} holding Python objects ({found[1]}) that "
            f"would run code when loaded, not a plain weights file; {_resave_hint(file)}"
        )
    inner = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
    if inner:
        return CheckpointError(
            f"{file}: {kind} that the weights-only unpickler cannot read "
            f"({inner[1].strip()}): damaged, or written with pickle instructions it does not "
            f"know; {_resave_hint(file)}"
        )
    cause = msg.strip().split("\n")[0].split(". ")[0] or type(err).__name__
    if isinstance(err, EOFError):
        cause = "it ends too early"
    return CheckpointError(
        f"{file}: damaged, truncated or not written by torch.save ({kind}: {cause})"
    )


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a file or URL and return its flat state dict (wrappers and prefixes removed)."""
    file = _fetch(str(path)) if _is_url(path) else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    obj = _read_safetensors(file) if file.suffix == ".safetensors" else read_torch_file(file)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{file} holds no state dict of tensors")
    out = {}
    for k, v in obj.items():
        for prefix in _WRAPPER_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def attention_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of ``model``'s attention modules (those the attention factory
    builds: CBAM, SE, BAM, channel and spatial attention), wherever they sit."""
    kinds = tuple(t for t in ATTENTIONS.values() if isinstance(t, type))
    prefixes = tuple(f"{n}." for n, m in model.named_modules() if n and isinstance(m, kinds))
    return {k for k in model.state_dict() if k.startswith(prefixes)} if prefixes else set()


def detect_format(state: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """ "authors", "torchvision" (none of the model's attention keys) or "convattn"."""
    if any(".cbam.ChannelGate." in k or ".cbam.SpatialGate." in k for k in state):
        return "authors"
    attn = attention_keys(model)
    if attn and attn.isdisjoint(_rename_stage_attention(state, model.state_dict())):
        return "torchvision"
    return "convattn"


def convert_authors_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' CBAM keys to ours (other keys are unchanged)."""
    out = {}
    for k, v in state.items():
        for pattern, repl in _AUTHORS_RENAMES:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def _rename_stage_attention(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Stage attention was ``layer<i>.bam`` before it became ``layer<i>.attn``."""
    out = {}
    for k, v in state.items():
        new = re.sub(r"^(layer\d+)\.bam\.", r"\1.attn.", k)
        out[new if new != k and k not in own and new in own else k] = v
    return out


def _counters_kept(missing: list[str], state: Mapping[str, torch.Tensor]) -> list[str]:
    """The missing ``num_batches_tracked`` keys of BatchNorms whose statistics the file has.

    Files saved before PyTorch 0.4.1 have no such counters. ``load_state_dict`` accepts
    them without one (the BatchNorm keeps its current counter), so they are no error here.
    """
    suffix = "num_batches_tracked"
    return [
        k for k in missing if k.endswith(suffix) and k[: -len(suffix)] + "running_mean" in state
    ]


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load weights from ``path`` (file or URL) into ``model``, detecting the format.

    Args:
        model: the model to fill.
        path: authors' checkpoint, torchvision state dict, convattn ``.pt`` or
            ``.safetensors``, or a URL to any of those.
        strict: raise :class:`CheckpointError` on missing, unexpected or mismatched keys
            (for a torchvision backbone the attention layers may be missing). ``False``
            loads what fits and reports the rest.

    Returns:
        A :class:`LoadReport`; its summary is also logged.
    """
    state = read_state_dict(path)
    fmt = detect_format(state, model)
    if fmt == "authors":
        state = convert_authors_keys(state)
    own = model.state_dict()
    state = _rename_stage_attention(state, own)
    report = LoadReport(fmt)
    if getattr(model, "features_only", False):  # no classifier to load into
        report.head_skipped = sorted(k for k in state if k.startswith("fc.") and k not in own)
        state = {k: v for k, v in state.items() if k not in report.head_skipped}
    report.unexpected = sorted(k for k in state if k not in own)
    report.missing = sorted(k for k in own if k not in state)
    report.mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    report.loaded = sorted(fits)
    report.counters_kept = _counters_kept(report.missing, fits)
    report.missing = [k for k in report.missing if k not in report.counters_kept]
    may_miss = attention_keys(model) if fmt == "torchvision" else set()
    bad_missing = [k for k in report.missing if k not in may_miss]
    if strict and (bad_missing or report.unexpected or report.mismatched):
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__} ({fmt} format): "
            f"missing {bad_missing[:20]}, unexpected {report.unexpected[:20]}, "
            f"shape mismatch {report.mismatched[:20]}; pass strict=False for a partial load"
        )
    model.load_state_dict(fits, strict=False)  # BatchNorm keeps a counter the file lacks
    log.info("%s", report.summary())
    return report
