"""Settings of one training run (everything but the network, see ModelConfig)."""

import dataclasses
import json
import os

LR_SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored", "tpu")

TRAIN_CONFIG_FILENAME = "train_config.json"


@dataclasses.dataclass
class TrainConfig:
  """Training settings, DELF train.py-like; see dolg_tf/train.py for flag help."""

  train_file_pattern: str = ""
  validation_file_pattern: str = ""
  logdir: str = "runs/demo"
  dataset_version: str = "gld_v2_clean"
  num_classes: int = 0  # 0: from dataset_version.
  batch_size: int = 64  # global, over all replicas.
  image_size: int = 512
  min_crop_area: float = 0.08  # random-resized crop area range [min_crop_area, 1].
  max_steps: int = 0  # 0: from epochs x steps_per_epoch.
  epochs: int = 0
  steps_per_epoch: int = 0  # 0: counted from the training files.
  initial_lr: float = 0.01
  lr_schedule: str = "cosine"
  warmup_steps: int = 0
  warmup_epochs: float = 0.0  # used when warmup_steps is 0.
  warmup_factor: float = 0.1  # warm-up starts at warmup_factor * initial_lr.
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 1e-4  # coupled L2 term, as the official DOLG (PyTorch SGD).
  clip_norm: float = 0.0  # 0: no clipping; else global-norm clipping.
  mixed_precision: str = "float32"
  distribution_strategy: str = "one_device"
  num_gpus: int = 0
  tpu: str = ""
  seed: int = 0
  log_every: int = 20
  checkpoint_every: int = 200
  max_checkpoints: int = 3
  validate_every: int = 0  # 0: only at the end.
  validation_steps: int = 20
  export_at_end: bool = True
  imagenet_checkpoint: str = ""

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Checks values; raises ValueError naming the first bad field."""
    if self.lr_schedule not in LR_SCHEDULES:
      raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
    if self.mixed_precision not in MIXED_PRECISION_POLICIES:
      raise ValueError(
        f"mixed_precision must be one of {MIXED_PRECISION_POLICIES}, got {self.mixed_precision!r}"
      )
    if self.distribution_strategy not in STRATEGIES:
      raise ValueError(
        f"distribution_strategy must be one of {STRATEGIES}, got {self.distribution_strategy!r}"
      )
    for name in ("batch_size", "image_size", "log_every", "checkpoint_every", "max_checkpoints"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("max_steps", "epochs", "steps_per_epoch", "warmup_steps", "num_classes"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if not 0 < self.min_crop_area <= 1:
      raise ValueError(f"min_crop_area must be in (0, 1], got {self.min_crop_area}")
    if self.warmup_epochs < 0:
      raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
    if self.initial_lr <= 0:
      raise ValueError(f"initial_lr must be positive, got {self.initial_lr}")
    if self.weight_decay < 0 or self.clip_norm < 0:
      raise ValueError("weight_decay and clip_norm must be >= 0")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def save_train_config(config: TrainConfig, directory: str) -> str:
  """Writes the resolved training settings as JSON (atomically); returns the path."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, TRAIN_CONFIG_FILENAME)
  with open(path + ".tmp", "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)
  return path
