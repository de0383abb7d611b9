"""Training and evaluation: ``TrainConfig``, the resumable (and ``torchrun``-ready) loop, safetensors
checkpoints, metrics and plots. Command line: ``taylorshift train`` and ``taylorshift eval``."""

from taylorshift.train.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from taylorshift.train.config import TrainConfig, apply_overrides, make_config, read_config_file
from taylorshift.train.loop import RunExistsError, Trainer, train

__all__ = [
    "CheckpointError", "RunExistsError", "TrainConfig", "Trainer", "apply_overrides", "load_model", "make_config",
    "read_checkpoint", "read_config_file", "save_checkpoint", "train",
]
