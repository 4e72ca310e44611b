"""One model configuration shared by training, export, conversion and extraction.

Training writes it next to checkpoints and SavedModels (`save_model_config`);
every later stage reads it back (`load_model_config`) and builds the same
network through `dolg_tf.model.builder`.
"""

import dataclasses
import json
import os
from collections.abc import Sequence

# Official DOLG / torchvision ImageNet statistics in pixel units (RGB order).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
# DELF / DELG: (pixel - 128) / 128.
DELG_MEAN_RGB = (128.0, 128.0, 128.0)
DELG_STD_RGB = (128.0, 128.0, 128.0)

BACKBONE_DEPTHS = (26, 50, 101, 152)
BACKBONE_LAYOUTS = ("pycls", "keras")
MODEL_NAMES = ("dolg", "delg")
HEAD_TYPES = ("arcface", "curricularface", "subcenter_arcface")
OFFICIAL_DILATIONS = (6, 12, 18)
PAPER_DILATIONS = (3, 6, 9)

CONFIG_FILENAME = "model_config.json"


@dataclasses.dataclass
class ModelConfig:
  """Describes one retrieval network and its training head.

  Attributes:
    name: 'dolg' or 'delg'.
    backbone_depth: ResNet depth, 50, 101 or 152 (26 = two blocks per stage,
      for tests and quick experiments).
    backbone_width_multiplier: scales every backbone width (1.0 = standard).
    backbone_layout: 'pycls' (torchvision/pycls "v1.5": stride on the 3x3 conv,
      no conv biases, PyTorch-style symmetric padding; the official DOLG
      weights) or 'keras' (keras.applications: stride on the first 1x1 conv,
      conv biases; the Keras ImageNet .h5 weights).
    block3_strides: as DELF's ResNet: subsample the stage-3 output by 2 and
      drop the stride of stage 4, so both maps have stride 32.
    bn_momentum: BatchNorm moving-average momentum (Keras convention); None
      takes the layout's default (pycls 0.9 = PyTorch 0.1, keras 0.99).
    bn_epsilon: BatchNorm epsilon; None takes the layout's default (pycls 1e-5,
      keras 1.001e-5).
    input_mean: per-channel mean subtracted from RGB pixels in [0, 255].
    input_std: per-channel std dividing RGB pixels in [0, 255].
    input_channel_order: 'RGB', or 'BGR' to reverse the channels after the
      normalisation (the official DOLG weights were trained on BGR input).
    use_multi_atrous: DOLG local branch: multi-atrous module on/off (the
      official code and released weights have it off).
    atrous_dilations: dilations of the multi-atrous 3x3 branches (official
      6/12/18; the paper's text 3/6/9).
    gem_p: GeM power (initial value when learnable).
    gem_p_trainable: learn p (latest official DOLG) or keep it fixed.
    gem_eps: GeM clamp minimum.
    local_dim: channels of the DOLG local branch (f_l) and of fc_t (f_g).
    embedding_dim: dimension of the final descriptor.
    head_type: margin head used for training.
    head_scale: margin head scale s.
    head_margin: margin m (for the sub-center head, the smallest margin).
    head_margin_max: sub-center head: largest per-class margin.
    head_num_subcenters: sub-center head: sub-centres per class.
    delg_reduced_dim: DELG autoencoder bottleneck channels.
    delg_attention_hidden: DELG attention hidden channels.
  """

  name: str = "dolg"
  backbone_depth: int = 50
  backbone_width_multiplier: float = 1.0
  backbone_layout: str = "pycls"
  block3_strides: bool = False
  bn_momentum: float | None = None
  bn_epsilon: float | None = None
  input_mean: Sequence[float] = IMAGENET_MEAN_RGB
  input_std: Sequence[float] = IMAGENET_STD_RGB
  input_channel_order: str = "RGB"
  use_multi_atrous: bool = False
  atrous_dilations: Sequence[int] = OFFICIAL_DILATIONS
  gem_p: float = 3.0
  gem_p_trainable: bool = True
  gem_eps: float = 1e-6
  local_dim: int = 1024
  embedding_dim: int = 512
  head_type: str = "arcface"
  head_scale: float = 30.0
  head_margin: float = 0.15
  head_margin_max: float = 0.5
  head_num_subcenters: int = 3
  delg_reduced_dim: int = 128
  delg_attention_hidden: int = 512

  def __post_init__(self):
    self.input_mean = tuple(float(v) for v in self.input_mean)
    self.input_std = tuple(float(v) for v in self.input_std)
    self.atrous_dilations = tuple(int(v) for v in self.atrous_dilations)
    self.validate()

  def validate(self) -> None:
    """Checks field values.

    Raises:
      ValueError: naming the first invalid field.
    """
    _check_choice("name", self.name, MODEL_NAMES)
    _check_choice("backbone_depth", self.backbone_depth, BACKBONE_DEPTHS)
    _check_choice("backbone_layout", self.backbone_layout, BACKBONE_LAYOUTS)
    _check_choice("head_type", self.head_type, HEAD_TYPES)
    _check_choice("input_channel_order", self.input_channel_order, ("RGB", "BGR"))
    if len(self.input_mean) != 3 or len(self.input_std) != 3:
      raise ValueError("ModelConfig.input_mean and input_std need 3 values each")
    if min(self.input_std) <= 0:
      raise ValueError(f"ModelConfig.input_std must be positive, got {self.input_std}")
    if not self.atrous_dilations or min(self.atrous_dilations) < 1:
      raise ValueError(f"ModelConfig.atrous_dilations must be >= 1, got {self.atrous_dilations}")
    if self.backbone_width_multiplier <= 0:
      raise ValueError(
        "ModelConfig.backbone_width_multiplier must be positive, got "
        f"{self.backbone_width_multiplier}"
      )
    if self.gem_p <= 0:
      raise ValueError(f"ModelConfig.gem_p must be positive, got {self.gem_p}")
    for field in (
      "local_dim",
      "embedding_dim",
      "head_num_subcenters",
      "delg_reduced_dim",
      "delg_attention_hidden",
    ):
      if getattr(self, field) < 1:
        raise ValueError(f"ModelConfig.{field} must be >= 1, got {getattr(self, field)}")
    if not 0 <= self.head_margin <= self.head_margin_max:
      raise ValueError(
        "ModelConfig.head_margin must be in [0, head_margin_max], got "
        f"{self.head_margin} (head_margin_max {self.head_margin_max})"
      )

  @property
  def resolved_bn_momentum(self) -> float:
    if self.bn_momentum is not None:
      return self.bn_momentum
    return 0.9 if self.backbone_layout == "pycls" else 0.99

  @property
  def resolved_bn_epsilon(self) -> float:
    if self.bn_epsilon is not None:
      return self.bn_epsilon
    return 1e-5 if self.backbone_layout == "pycls" else 1.001e-5

  def to_dict(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, values: dict) -> "ModelConfig":
    """Builds a config from a dict, rejecting unknown keys.

    Raises:
      ValueError: on an unknown key or an invalid value.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
    return cls(**values)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def delg_config(**overrides) -> ModelConfig:
  """A ModelConfig with the DELG paper's settings (keras-layout R50, GeM p=3 fixed,
  2048-d whitening, ArcFace s=45.25 m=0.1, (x - 128) / 128 input); `overrides` win."""
  values = dict(
    name="delg",
    backbone_layout="keras",
    gem_p_trainable=False,
    embedding_dim=2048,
    input_mean=DELG_MEAN_RGB,
    input_std=DELG_STD_RGB,
    head_type="arcface",
    head_scale=45.25,
    head_margin=0.1,
  )
  values.update(overrides)
  return ModelConfig(**values)


def _check_choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"ModelConfig.{field} must be one of {list(choices)}, got {value!r}")


def save_model_config(config: ModelConfig, directory: str) -> str:
  """Writes `config` as JSON into `directory` (atomically) and returns the path."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, CONFIG_FILENAME)
  tmp_path = path + ".tmp"
  with open(tmp_path, "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp_path, path)
  return path


def load_model_config(path: str) -> ModelConfig:
  """Reads a config written by `save_model_config` (a file or its directory).

  Raises:
    FileNotFoundError: if there is no config at `path`.
    ValueError: naming the file, if it is not a valid config.
  """
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(f"model config not found: {path}")
  try:
    with open(path) as f:
      values = json.load(f)
    return ModelConfig.from_dict(values)
  except (json.JSONDecodeError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: invalid model config: {e}") from e
