"""``TrainConfig``: every setting of a training run, loadable from YAML/JSON and overridable from the CLI.

The resolved config is written as ``config.json`` next to each run, and into every checkpoint, so a run can
be resumed, evaluated or reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taylorshift.files import atomic_open

# the model preset a task trains by default (CPU-sized presets, head size 16)
DEFAULT_MODELS: dict[str, str] = {
    "listops": "listops_cpu",
    "listops_short": "listops_cpu",
    "pathfinder": "pathfinder_cpu",
    "pathfinder16": "pathfinder_cpu",
    "pathfinder16_easy": "pathfinder_cpu",
    "text": "text_bytes_cpu",
    "pixels": "pixels_cpu",
    "fmnist_images": "vit_tiny_fmnist",
    "pathfinder16_images": "vit_pathfinder16",
    "fortunes-lm": "fortunes_lm",
    "manpages": "text_bytes_cpu",
}
# model config fields a task needs on top of its default preset (applied when the run uses that preset; the
# run's own model_overrides win)
DEFAULT_MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "manpages": {"num_classes": 3},
}

# fields that define the function being trained: a resumed run must match them exactly
IDENTITY_FIELDS: tuple[str, ...] = (
    "task", "model", "attention", "backend", "model_overrides", "data_options", "batch_size", "lr",
    "weight_decay", "betas", "warmup_steps", "min_lr_ratio", "label_smoothing", "grad_clip", "bf16", "seed",
    "train_samples",
)


@dataclass
class TrainConfig:
    """Settings of one training run (``taylorshift train``).

    Attributes:
        task: data task (``taylorshift data list``).
        model: model preset (``taylorshift.models.list_models()``); default: the task's CPU preset.
        attention: attention type (``"taylorshift"``, ``"softmax"``, or an installed baseline).
        backend: TaylorShift backend ``"auto"``, ``"direct"`` or ``"efficient"``.
        model_overrides: model config fields to replace (e.g. ``{"depth": 1}``).
        data_options: keyword options for the task's dataset (e.g. ``{"seq_len": 256}`` for the LM task).
        cache_dir: data cache (default ``$TAYLORSHIFT_DATA_DIR`` or ``~/.cache/taylorshift/data``).
        out_dir: run folder (config, metrics, plots, checkpoint); default ``runs/<task>-<model>-<attention>``.
        batch_size: global batch size (split evenly over processes under ``torchrun``).
        eval_batch_size: batch size of evaluation passes.
        max_steps: optimizer steps; exactly one of ``max_steps``, ``epochs`` and ``budget_minutes`` is set.
        epochs: passes over the training set (fractional allowed).
        budget_minutes: training budget in minutes of the ``budget_clock``: the step count is fixed after
            timing the first steps, so the learning-rate schedule is a proper warm-up + cosine.
        budget_clock: ``"cpu"`` (process CPU time: fair between runs sharing a machine) or ``"wall"``.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay (not applied to biases, norms, embeddings' positions, temperatures).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps (capped at a tenth of the total).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        label_smoothing: cross-entropy label smoothing.
        grad_clip: clip the global gradient norm to this (0 disables).
        bf16: run forward and loss under ``torch.autocast`` with bfloat16.
        seed: seeds model init, data order and dropout.
        train_samples: use only the first ``train_samples`` training examples (None: all).
        eval_every: evaluate on the validation split every this many steps (0: only at the end).
        eval_samples: evaluate on at most this many examples per split (None: all).
        ckpt_every: write the checkpoint every this many steps (it is also written at the end).
        log_every: log training loss/accuracy (averaged over the interval) every this many steps.
        threads: torch threads per process (None: torch's default).
        sequence_parallel: split the sequence of every example across this many processes (under ``torchrun``;
            TaylorShift attention, token and LM tasks; see :mod:`taylorshift.distributed`); the processes form
            ``world_size / sequence_parallel`` data-parallel groups. 1: off.
        progress: show progress bars.
    """

    task: str
    model: str | None = None
    attention: str = "taylorshift"
    backend: str = "auto"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    out_dir: str | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    max_steps: int | None = None
    epochs: float | None = None
    budget_minutes: float | None = None
    budget_clock: str = "cpu"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = False
    seed: int = 0
    train_samples: int | None = None
    eval_every: int = 0
    eval_samples: int | None = None
    ckpt_every: int = 200
    log_every: int = 10
    threads: int | None = None
    progress: bool = True
    sequence_parallel: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)  # type: ignore[assignment]  (JSON and YAML give lists)
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        budgets = [n for n in ("max_steps", "epochs", "budget_minutes") if getattr(self, n) is not None]
        if len(budgets) != 1:
            raise ConfigError(budgets[-1] if budgets else "max_steps",
                              f"set exactly one of max_steps, epochs, budget_minutes (got {budgets or 'none'})")
        for name in ("batch_size", "eval_batch_size", "ckpt_every", "log_every", "sequence_parallel"):
            _check_min(name, getattr(self, name), 1)
        for name in ("eval_every", "warmup_steps", "seed", "weight_decay", "grad_clip"):
            _check_min(name, getattr(self, name), 0)
        for name in ("max_steps", "train_samples", "eval_samples", "threads"):
            if getattr(self, name) is not None:
                _check_min(name, getattr(self, name), 1)
        for name in ("epochs", "budget_minutes", "lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(name, f"{name} must be positive, got {value!r}")
        if self.budget_clock not in ("cpu", "wall"):
            raise ConfigError("budget_clock", f"budget_clock must be 'cpu' or 'wall', got {self.budget_clock!r}")
        for name, lo, hi in (("label_smoothing", 0, 1), ("min_lr_ratio", 0, 1)):
            if not lo <= getattr(self, name) <= hi:
                raise ConfigError(name, f"{name} must be in [{lo}, {hi}], got {getattr(self, name)!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("betas", f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self._check_task_and_model()
        if self.out_dir is None:
            self.out_dir = str(Path("runs") / f"{self.task}-{self.model}-{self.attention}")

    def _check_task_and_model(self) -> None:
        """The task exists, takes ``data_options``, and the model preset, attention, backend and
        ``model_overrides`` resolve (so a typo fails here, before any data is loaded)."""
        from taylorshift.data import get_task
        from taylorshift.models.registry import model_config

        if not self.task:
            raise ConfigError("task", "task must be a task name, got ''")
        try:
            task = get_task(self.task)
        except KeyError as err:
            raise ConfigError("task", err.args[0]) from None
        if self.model is None:
            if self.task not in DEFAULT_MODELS:
                raise ConfigError("model", f"task {self.task!r} has no default model; pass model=<preset>")
            self.model = DEFAULT_MODELS[self.task]
        if self.model == DEFAULT_MODELS.get(self.task):
            self.model_overrides = {**DEFAULT_MODEL_OVERRIDES.get(self.task, {}), **self.model_overrides}
        try:
            task.check_dataset_options(self.data_options)
        except TypeError as err:
            raise ConfigError("data_options", str(err)) from None
        try:
            model_config(self.model, self.attention, self.backend, **self.model_overrides)
        except (ValueError, TypeError) as err:
            field_name = "model_overrides" if "override" in str(err) else "model"
            raise ConfigError(field_name, str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues."""
        d = self.to_dict()
        return {k: d[k] for k in IDENTITY_FIELDS}


class ConfigError(ValueError):
    """An invalid :class:`TrainConfig` value; ``field`` names the field (the CLI maps it to the option)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if type(None) in args:
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    names = {int: "an int", float: "a finite number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is dict:
        return "a mapping"
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    return str(hint)


def _matches(value: Any, hint: Any) -> bool:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if type(None) in args:
        return value is None or any(_matches(value, a) for a in args if a is not type(None))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin is tuple:
        return isinstance(value, tuple) and len(value) == len(args) and all(_matches(v, a) for v, a in
                                                                             zip(value, args, strict=True))
    raise TypeError(f"no check for the type {hint}")  # pragma: no cover - a new field type needs one


def _check_type(name: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise ConfigError(name, f"{name} must be {_describe(hint)}, got {value!r}")


def _check_min(name: str, value: Any, minimum: int) -> None:
    if value < minimum:
        kind = "an int" if isinstance(value, int) else "a number"
        raise ConfigError(name, f"{name} must be {kind} >= {minimum}, got {value!r}")


def config_fields() -> list[str]:
    """Names of the :class:`TrainConfig` fields."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping stored in a ``.json``, ``.yaml`` or ``.yml`` file.

    Raises:
        ValueError: unknown extension, unparsable file, or not a mapping.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError("YAML configs need PyYAML: pip install 'taylorshift[train]'") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    else:
        raise ValueError(f"config file must end in .json, .yaml or .yml, got {path.name!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of TrainConfig fields, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A CLI override value: JSON if it parses (numbers, true/false/null, lists, dicts), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings to a config mapping; dotted keys reach into the dict fields
    (``model_overrides.depth=1``).

    Raises:
        ValueError: malformed item or unknown top-level field.
    """
    data = json.loads(json.dumps(data))  # deep copy
    valid = set(config_fields())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override must look like key=value, got {item!r}")
        parts = key.split(".")
        if parts[0] not in valid:
            raise ValueError(f"unknown config field {parts[0]!r}; valid fields: {sorted(valid)}")
        target = data
        for p in parts[:-1]:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise ValueError(f"cannot set {key!r}: {p!r} is not a mapping")
        target[parts[-1]] = parse_value(value)
    return data


def make_config(data: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a mapping, with a clear error for unknown fields."""
    unknown = sorted(set(data) - set(config_fields()))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {config_fields()}")
    if "task" not in data:
        raise ValueError("the config needs a task (e.g. --task listops)")
    return TrainConfig(**data)


def write_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as JSON (atomically)."""
    with atomic_open(path) as f:
        f.write(json.dumps(config.to_dict(), indent=2) + "\n")
    return Path(path)
