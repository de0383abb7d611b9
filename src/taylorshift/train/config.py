"""``TrainConfig``: every setting of a training run, loadable from YAML/JSON and overridable from the CLI.

The resolved config is written as ``config.json`` next to each run, and into every checkpoint, so a run can
be resumed, evaluated or reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the model preset a task trains by default (CPU-sized presets, head size 16)
DEFAULT_MODELS: dict[str, str] = {
    "listops": "listops_cpu",
    "pathfinder": "pathfinder_cpu",
    "text": "text_bytes_cpu",
    "pixels": "pixels_cpu",
    "fmnist_images": "vit_tiny_fmnist",
    "fortunes-lm": "fortunes_lm",
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

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a task name, got {self.task!r}")
        if self.model is None:
            if self.task not in DEFAULT_MODELS:
                raise ValueError(f"task {self.task!r} has no default model; pass model=<preset>")
            self.model = DEFAULT_MODELS[self.task]
        if self.out_dir is None:
            self.out_dir = str(Path("runs") / f"{self.task}-{self.model}-{self.attention}")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in ("model_overrides", "data_options"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")
        budgets = [n for n in ("max_steps", "epochs", "budget_minutes") if getattr(self, n) is not None]
        if len(budgets) != 1:
            raise ValueError(f"set exactly one of max_steps, epochs, budget_minutes (got {budgets or 'none'})")
        for name in ("batch_size", "eval_batch_size", "ckpt_every", "log_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("eval_every", "warmup_steps", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("max_steps", "train_samples", "eval_samples", "threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        for name in ("epochs", "budget_minutes", "lr"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.budget_clock not in ("cpu", "wall"):
            raise ValueError(f"budget_clock must be 'cpu' or 'wall', got {self.budget_clock!r}")
        for name, lo, hi in (("label_smoothing", 0, 1), ("min_lr_ratio", 0, 1)):
            if not lo <= float(getattr(self, name)) <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues."""
        d = self.to_dict()
        return {k: d[k] for k in IDENTITY_FIELDS}


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path
