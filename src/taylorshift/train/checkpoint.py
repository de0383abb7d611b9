"""Training checkpoints: one safetensors file with the model, optimizer and RNG state, written atomically.

Layout of ``checkpoint.safetensors``:

* tensors ``model.<name>`` (the model's ``state_dict``), ``optim.<param index>.<name>`` (AdamW moments and
  step counts), ``rng.torch`` (the CPU generator's state);
* metadata (strings): ``format`` (:data:`FORMAT`), ``meta`` (JSON: train config, model config and its class,
  step, total steps, warm-up, elapsed time, optimizer param groups, Python RNG state), ``sha256`` (a hash of
  every tensor's name, dtype, shape and bytes) and ``meta_sha256`` (a hash of every other metadata entry,
  byte for byte). Together the two hashes cover everything a resume restores: a flipped bit in a weight,
  in the step count or in a hyper-parameter is caught, not trained on.

Loading never unpickles anything (safetensors holds raw tensors; the rest is JSON). A truncated or altered
file, a file that is not ours, or a model that does not match raises :class:`CheckpointError` saying what
is wrong. Checkpoints of the first format (``taylorshift-checkpoint-v1``, tensors hashed, metadata not) are
still read, with a :class:`UnverifiedCheckpointWarning`; the next save of the run writes the current format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from taylorshift.files import atomic_write, os_error

FORMAT = "taylorshift-checkpoint-v2"
LEGACY_FORMAT = "taylorshift-checkpoint-v1"  # metadata not covered by a hash: read with a warning
FILENAME = "checkpoint.safetensors"
_HASH_KEYS = ("sha256", "meta_sha256")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupted, not a taylorshift checkpoint, or not matching the run."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint of the first format: its tensors are verified, its metadata (config, step, ...) cannot be."""


def _safetensors():
    try:
        import safetensors.torch as st
        from safetensors import safe_open
    except ImportError:
        raise ImportError("checkpoints need safetensors: pip install 'taylorshift[train]'") from None
    return st, safe_open


def _digest(tensors: dict[str, Tensor]) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _meta_digest(metadata: dict[str, str]) -> str:
    """sha256 of every metadata entry except the hashes themselves: the exact strings that are parsed,
    each length-prefixed, in key order."""
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k not in _HASH_KEYS):
        for part in (key.encode(), metadata[key].encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def _model_state(model: nn.Module) -> dict[str, Tensor]:
    return {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, Tensor) else torch.tensor(value)
            tensors[f"optim.{index}.{name}"] = t.detach().cpu().contiguous().clone()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def model_config_dict(config: Any) -> dict[str, Any]:
    """``{"class": <config class name>, "fields": {...}}`` of a model config dataclass."""
    return {"class": type(config).__name__, "fields": dataclasses.asdict(config)}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict[str, Any]) -> Path:
    """Write model, optimizer and RNG state plus ``meta`` (JSON-ready) to ``path`` atomically.

    The file is written next to ``path`` under a temporary name, flushed to disk, then renamed over
    ``path`` (:func:`taylorshift.files.atomic_write`): an interruption or a full disk leaves either the old
    or the new checkpoint, never a partial one, and the temporary file of a killed run is removed.

    Raises:
        OSError: the file cannot be written (the folder is read-only, the disk is full, ...).
    """
    st, _ = _safetensors()
    path = Path(path)
    tensors = _model_state(model)
    meta = dict(meta)
    if optimizer is not None:
        opt_tensors, groups = _optimizer_state(optimizer)
        tensors.update(opt_tensors)
        meta["param_groups"] = groups
    tensors["rng.torch"] = torch.get_rng_state()
    meta["python_rng"] = _python_rng_to_json(random.getstate())
    metadata = {"format": FORMAT, "meta": json.dumps(meta), "sha256": _digest(tensors)}
    metadata["meta_sha256"] = _meta_digest(metadata)

    def write(tmp: Path) -> None:
        try:
            st.save_file(tensors, str(tmp), metadata=metadata)
        except Exception as err:  # safetensors reports I/O failures (a full disk) as its own error type
            if isinstance(err, OSError):
                raise
            raise os_error(err, path) from None

    return atomic_write(path, write)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a checkpoint, after checking its format and hash.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable, truncated, altered, or not a taylorshift checkpoint.
    """
    st, safe_open = _safetensors()
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for every parse failure
        raise CheckpointError(f"checkpoint {path} is corrupted or not a safetensors file ({e})") from None
    fmt = metadata.get("format")
    if fmt not in (FORMAT, LEGACY_FORMAT):
        raise CheckpointError(f"{path} is not a taylorshift training checkpoint (format {fmt!r}, expected {FORMAT!r})")
    if _digest(tensors) != metadata.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted: its tensors do not match the stored sha256")
    if fmt == FORMAT and _meta_digest(metadata) != metadata.get("meta_sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted: its metadata (config, step, schedule, optimizer "
                              "settings or RNG state) does not match the stored meta_sha256")
    if fmt == LEGACY_FORMAT:
        warnings.warn(f"checkpoint {path} has the older format {LEGACY_FORMAT!r}: its tensors are verified but its "
                      "metadata (config, step, schedule, optimizer settings) is not covered by a hash; the next "
                      "save writes the current format", UnverifiedCheckpointWarning, stacklevel=2)
    try:
        meta = json.loads(metadata["meta"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({e})") from None
    return tensors, meta


def restore_model(model: nn.Module, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load the ``model.*`` tensors into ``model``; any missing, unexpected or mis-shaped entry raises
    :class:`CheckpointError` listing them."""
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Load the optimizer moments and param groups saved by :func:`save_checkpoint`."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = meta.get("param_groups")
    if groups is None:
        raise CheckpointError("checkpoint has no optimizer state (param_groups missing)")
    own = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in own] != [len(g["params"]) for g in groups]:
        raise CheckpointError("checkpoint's optimizer param groups do not match the model's parameters")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot restore the optimizer state: {e}") from None


def restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Put the torch CPU and Python generators back where the checkpoint left them."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "python_rng" in meta:
        random.setstate(_python_rng_from_json(meta["python_rng"]))


def _python_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def model_from_meta(meta: dict[str, Any], backend: str | None = None) -> nn.Module:
    """Build the (untrained) model a checkpoint's metadata describes, optionally with another backend."""
    from taylorshift.models.registry import _MODEL_CLASSES, build_model

    info = meta.get("model_config")
    if not isinstance(info, dict) or "class" not in info or "fields" not in info:
        raise CheckpointError("checkpoint metadata has no model config")
    classes = {cls.__name__: cls for cls in _MODEL_CLASSES}
    if info["class"] not in classes:
        raise CheckpointError(f"checkpoint's model config class {info['class']!r} is unknown; "
                              f"known: {sorted(classes)}")
    fields = dict(info["fields"])
    if backend is not None:
        fields["backend"] = backend
    try:
        config = classes[info["class"]](**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint's model config is not valid here: {e}") from None
    return build_model(config)


def load_model(path: str | os.PathLike, backend: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a checkpoint (in eval mode) and its metadata.

    Args:
        path: a ``checkpoint.safetensors`` file or a run folder holding one.
        backend: evaluate with this TaylorShift backend instead of the one trained with (it is the same
            function; only speed and memory change).

    Returns:
        ``(model, meta)``; ``meta["config"]`` is the training config, ``meta["model_config"]`` the model's.
    """
    tensors, meta = read_checkpoint(path)
    model = model_from_meta(meta, backend)
    restore_model(model, tensors, source=f"checkpoint {path}")
    return model.eval(), meta
