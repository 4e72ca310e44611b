"""The sections of dolg_tf's configuration tree: model, data and training settings.

ModelConfig (the network and its margin head), DataConfig (training data and
augmentation) and TrainConfig (schedule, optimizer, runtime), with the values
their fields may take. dolg_tf.config assembles them, with the SavedModel
contract's ExportConfig, into the one ExperimentConfig; each field has its one
default here.
"""

import dataclasses

from dolg_tf.io.config_base import ConfigError, Section, check_at_least, check_choice

# Official DOLG / torchvision ImageNet statistics in pixel units (RGB order).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
# DELF / DELG: (pixel - 128) / 128.
DELG_MEAN_RGB = (128.0, 128.0, 128.0)
DELG_STD_RGB = (128.0, 128.0, 128.0)

BACKBONE_DEPTHS = (26, 50, 101, 152)
# "resnet" (backbone_depth, backbone_layout) or a keras.applications network
# (dolg_tf.model.keras_app_backbones, docs/BACKBONES.md).
KERAS_APP_BACKBONES = (
  tuple(f"efficientnet_b{i}" for i in range(8))
  + ("efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l")
  + ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")
)
BACKBONES = ("resnet",) + KERAS_APP_BACKBONES
BACKBONE_LAYOUTS = ("pycls", "keras", "delf")
MODEL_NAMES = ("dolg", "delg")
HEAD_TYPES = ("arcface", "curricularface", "subcenter_arcface")
OFFICIAL_DILATIONS = (6, 12, 18)
PAPER_DILATIONS = (3, 6, 9)
# The parts train.lr_multipliers names (dolg_tf/training/param_groups.py assigns the variables).
LR_MULTIPLIER_PARTS = ("backbone", "local", "global", "head")
DATASET_VERSIONS = ("gld_v1", "gld_v2", "gld_v2_clean", "synthetic")
LR_SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("sgd", "sgd_torch", "adam", "adamw")
MIXED_PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored", "tpu")


@dataclasses.dataclass
class ModelConfig(Section):
  """Describes one retrieval network and its training head.

  Attributes:
    name: 'dolg' or 'delg'.
    backbone: 'resnet' (the fields below), or a keras.applications network:
      'efficientnet_b0'..'efficientnet_b7', 'efficientnetv2_s/m/l',
      'convnext_tiny/small/base/large' (docs/BACKBONES.md: the stride-16 and
      stride-32 layers; their input normalisation is the one their ImageNet
      weights expect, so input_mean, input_std and input_channel_order apply
      to 'resnet' only; bn_momentum and bn_epsilon then set only the heads).
    backbone_depth: ResNet depth, 50, 101 or 152 (26 = two blocks per stage,
      for tests and quick experiments).
    backbone_width_multiplier: scales every backbone width (1.0 = standard).
    backbone_layout: 'pycls' (torchvision/pycls "v1.5": stride on the 3x3 conv,
      no conv biases, PyTorch-style symmetric padding; the official DOLG
      weights) or 'keras' (keras.applications: stride on the first 1x1 conv,
      conv biases; the Keras ImageNet .h5 weights) or 'delf' (exactly DELF's
      ResNet50: the keras block, 'same'-padded stem conv, unpadded max-pool,
      Keras-default BatchNorm; DELF/DELG checkpoints; the DELG default).
    block3_strides: as DELF's ResNet: subsample the stage-3 output by 2 and
      drop the stride of stage 4, so both maps have stride 32.
    bn_momentum: BatchNorm moving-average momentum (Keras convention); None
      takes the layout's default (pycls 0.9 = PyTorch 0.1, keras and delf 0.99).
    bn_epsilon: BatchNorm epsilon; None takes the layout's default (pycls 1e-5,
      keras 1.001e-5, delf 1e-3 = Keras' default, as DELF).
    input_mean: per-channel mean subtracted from RGB pixels in [0, 255].
    input_std: per-channel std dividing RGB pixels in [0, 255].
    input_channel_order: 'RGB', or 'BGR' to reverse the channels after the
      normalisation (the official DOLG weights were trained on BGR input).
    use_multi_atrous: DOLG local branch: multi-atrous module on/off (the
      official code and released weights have it off).
    atrous_dilations: dilations of the multi-atrous 3x3 branches (official
      6/12/18; the paper's text 3/6/9).
    gem_p: the trained GeM exponent of the global branch (initial value when
      learnable). Not to be confused with SuperGlobal's GeM+ exponent, which
      replaces it at inference (export.superglobal_gem_p; `gem_plus_p` in
      Python and in extraction configs), nor with the exponent of extraction's
      GEM scale pooling (DolgConfig global_config.gem_p).
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
    relu_up: SuperGlobal's ReLU-up: 0 = ReLU; a positive t replaces ReLU by
      max(x, t) at the block outputs of stages 1-3 and inside the stage-1
      blocks (where SuperGlobal's code applies it; its value 0.014). A
      training-free change: set it at export (`--params_override
      model.relu_up=0.014`), or train with it.
  """

  SECTION = "model"

  name: str = "dolg"
  backbone: str = "resnet"
  backbone_depth: int = 50
  backbone_width_multiplier: float = 1.0
  backbone_layout: str = "pycls"
  block3_strides: bool = False
  bn_momentum: float | None = None
  bn_epsilon: float | None = None
  input_mean: tuple[float, ...] = IMAGENET_MEAN_RGB
  input_std: tuple[float, ...] = IMAGENET_STD_RGB
  input_channel_order: str = "RGB"
  use_multi_atrous: bool = False
  atrous_dilations: tuple[int, ...] = OFFICIAL_DILATIONS
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
  relu_up: float = 0.0

  def validate(self) -> None:
    check_choice("model.name", self.name, MODEL_NAMES)
    check_choice("model.backbone", self.backbone, BACKBONES)
    check_choice("model.backbone_depth", self.backbone_depth, BACKBONE_DEPTHS)
    check_choice("model.backbone_layout", self.backbone_layout, BACKBONE_LAYOUTS)
    check_choice("model.head_type", self.head_type, HEAD_TYPES)
    check_choice("model.input_channel_order", self.input_channel_order, ("RGB", "BGR"))
    if len(self.input_mean) != 3 or len(self.input_std) != 3:
      raise ConfigError("model.input_mean and model.input_std need 3 values each")
    if min(self.input_std) <= 0:
      raise ConfigError(f"model.input_std must be positive, got {self.input_std}")
    if not self.atrous_dilations or min(self.atrous_dilations) < 1:
      raise ConfigError(f"model.atrous_dilations must be >= 1, got {self.atrous_dilations}")
    if self.backbone_width_multiplier <= 0 or self.gem_p <= 0:
      raise ConfigError("model.backbone_width_multiplier and model.gem_p must be positive")
    if self.relu_up < 0:
      raise ConfigError(f"model.relu_up must be >= 0 (0 = ReLU), got {self.relu_up}")
    if self.backbone != "resnet" and (self.relu_up or self.backbone_width_multiplier != 1.0):
      raise ConfigError(
        f"model.relu_up and model.backbone_width_multiplier apply to backbone 'resnet' only, "
        f"got {self.relu_up} and {self.backbone_width_multiplier} with {self.backbone!r}"
      )
    check_at_least(
      "model",
      self,
      (
        "local_dim",
        "embedding_dim",
        "head_num_subcenters",
        "delg_reduced_dim",
        "delg_attention_hidden",
      ),
      1,
    )
    if not 0 <= self.head_margin <= self.head_margin_max:
      raise ConfigError(
        "model.head_margin must be in [0, head_margin_max], got "
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
    return {"pycls": 1e-5, "delf": 1e-3}.get(self.backbone_layout, 1.001e-5)


@dataclasses.dataclass
class DataConfig(Section):
  """Training data.

  Attributes:
    train_file_pattern: training TFRecords (GLDv2 layout, see data/gldv2.py).
      Empty with synthetic_classes > 0: a synthetic-landmarks set is
      generated under <logdir>/data.
    validation_file_pattern: validation TFRecords (optional).
    dataset_version: sets the number of classes (gld_v1 14951, gld_v2 203094,
      gld_v2_clean 81313); 'synthetic' counts them from the data.
    num_classes: explicit number of classes (0: from dataset_version).
    image_size: training images are random-resized crops of this side.
    min_crop_area: random-resized crop area range [min_crop_area, 1].
    synthetic_classes: > 0: generate that many synthetic landmark classes.
    synthetic_views: synthetic training views per class.
    skip_corrupt_records: train without the rest of a corrupt or truncated
      TFRecord file (from its first bad record) and without images that do
      not decode, logging each; False: such a file stops the run before the
      first step, named.
  """

  SECTION = "data"

  train_file_pattern: str = ""
  validation_file_pattern: str = ""
  dataset_version: str = "gld_v2_clean"
  num_classes: int = 0
  image_size: int = 512
  min_crop_area: float = 0.08
  synthetic_classes: int = 0
  synthetic_views: int = 48
  skip_corrupt_records: bool = False

  def validate(self) -> None:
    check_choice("data.dataset_version", self.dataset_version, DATASET_VERSIONS)
    check_at_least("data", self, ("image_size", "synthetic_views"), 1)
    check_at_least("data", self, ("num_classes", "synthetic_classes"), 0)
    if not 0 < self.min_crop_area <= 1:
      raise ConfigError(f"data.min_crop_area must be in (0, 1], got {self.min_crop_area}")
    if self.train_file_pattern and self.synthetic_classes:
      raise ConfigError(
        "data.train_file_pattern and data.synthetic_classes are exclusive (an experiment "
        "on your own TFRecords: --experiment=dolg_gldv2 or delg_gldv2)"
      )

  @property
  def is_synthetic(self) -> bool:
    return self.synthetic_classes > 0


@dataclasses.dataclass
class TrainConfig(Section):
  """Schedule, optimizer and runtime of a training run (official DOLG recipe by default).

  Attributes:
    batch_size: global batch, over all replicas.
    max_steps: total steps; 0 = epochs x steps_per_epoch.
    epochs: used when max_steps is 0.
    steps_per_epoch: 0 = counted from the training files.
    initial_lr: peak learning rate (official DOLG: 0.01 for batch 64).
    lr_schedule: decay after the warm-up.
    warmup_steps: linear warm-up steps.
    warmup_epochs: used when warmup_steps is 0.
    warmup_factor: the warm-up starts at warmup_factor * initial_lr.
    optimizer: "sgd" (Keras SGD: momentum, nesterov), "sgd_torch" (the same
      with torch.optim.SGD's momentum buffer, exact where the rate changes; the
      official DOLG code's), or PyTorch's "adam" / "adamw" (betas 0.9/0.999,
      eps 1e-8; the GLR 2021 winner's Adam); dolg_tf/training/optimizers.py.
    momentum: SGD momentum.
    nesterov: Nesterov momentum.
    weight_decay: coupled L2 term, as the official DOLG (PyTorch SGD) and
      PyTorch's Adam; with optimizer=adamw, AdamW's decoupled decay.
    clip_norm: global-norm gradient clipping; 0 = off.
    mixed_precision: Keras mixed-precision policy, or "auto": mixed_bfloat16
      on CPUs with native bfloat16 (AVX512_BF16 / AMX; ~1.7x the fp32 step
      there), float32 elsewhere (bf16 is emulated, and slower, on AVX2).
    jit_compile: XLA-compile the forward and backward pass (GPU/TPU; on CPU
      it mostly adds compile time).
    distribution_strategy: tf.distribute strategy (multi_worker_mirrored reads TF_CONFIG).
    num_gpus: GPUs for one_device / mirrored.
    tpu: TPU address for the tpu strategy.
    seed: weights, data order and augmentation.
    log_every: steps between log lines and summaries.
    checkpoint_every: steps between checkpoints.
    max_checkpoints: checkpoints kept.
    validate_every: steps between validation runs; 0 = at the end only.
    validation_steps: validation batches per run; 0 = all.
    export_at_end: write a SavedModel under <logdir>/export at the end.
    lr_per_epoch: evaluate the warm-up and decay once per epoch (the official
      DOLG code's pycls schedule: the rate is constant within an epoch) rather
      than at every step (default; tf-models-official's LinearWarmup).
    imagenet_checkpoint: Keras ImageNet .h5 weights for the backbone.
    init_from: a fresh run's first weights: a dolg_tf run folder (its newest
      checkpoint), a dolg-convert / dolg-convert-delf output folder or a checkpoint
      prefix (dolg_tf/training/warm_start.py). Every model variable must load;
      a margin head (or DELG attention classifier) that does not fit is
      re-initialised and reported. Not the optimizer state or the step; not
      on a resumed run; not with imagenet_checkpoint.
    lr_multipliers: per-part learning-rate multipliers, "backbone=0.1,head=10"
      (or ";" between parts; parts: backbone, local, global, head; others 1), applied by scaling
      each part's gradients (dolg_tf/training/param_groups.py).
    chance_window_steps: stop a run whose training accuracy stays at chance
      for this many steps after the warm-up (docs/CONVERGENCE.md); 0 = never.
      A NaN/inf loss always stops the run.
    chance_window_min_epochs: the window is at least this many epochs (each
      class seen a few times before the rule may fire).
    chance_margin: 'at chance' is a window accuracy <= (1 + chance_margin) /
      num_classes.
    freeze_backbone_steps: staged fine-tuning: for the first N steps only the
      branches and the head train; the backbone's weights and BatchNorm
      statistics stay as loaded; then everything trains. 0 = no stage.
  """

  SECTION = "train"

  batch_size: int = 64
  max_steps: int = 0
  epochs: int = 0
  steps_per_epoch: int = 0
  initial_lr: float = 0.01
  lr_schedule: str = "cosine"
  warmup_steps: int = 0
  warmup_epochs: float = 0.0
  warmup_factor: float = 0.1
  optimizer: str = "sgd"
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 1e-4
  clip_norm: float = 0.0
  mixed_precision: str = "float32"
  jit_compile: bool = False
  distribution_strategy: str = "one_device"
  num_gpus: int = 0
  tpu: str = ""
  seed: int = 0
  log_every: int = 20
  checkpoint_every: int = 200
  max_checkpoints: int = 3
  validate_every: int = 0
  validation_steps: int = 20
  export_at_end: bool = True
  lr_per_epoch: bool = False
  imagenet_checkpoint: str = ""
  init_from: str = ""
  lr_multipliers: str = ""
  chance_window_steps: int = 1000
  chance_window_min_epochs: float = 2.0
  chance_margin: float = 0.25
  freeze_backbone_steps: int = 0

  def validate(self) -> None:
    check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
    check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
    check_choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION_POLICIES)
    check_choice("train.distribution_strategy", self.distribution_strategy, STRATEGIES)
    check_at_least(
      "train", self, ("batch_size", "log_every", "checkpoint_every", "max_checkpoints"), 1
    )
    check_at_least(
      "train",
      self,
      ("max_steps", "epochs", "steps_per_epoch", "warmup_steps", "warmup_epochs", "num_gpus"),
      0,
    )
    check_at_least(
      "train",
      self,
      (
        "weight_decay",
        "clip_norm",
        "chance_window_steps",
        "chance_window_min_epochs",
        "chance_margin",
        "freeze_backbone_steps",
      ),
      0,
    )
    if self.initial_lr <= 0:
      raise ConfigError(f"train.initial_lr must be positive, got {self.initial_lr}")
    if self.init_from and self.imagenet_checkpoint:
      raise ConfigError(
        "train.init_from and train.imagenet_checkpoint are both set: give one (init_from "
        "loads the whole network, imagenet_checkpoint the backbone only)"
      )
    self.lr_multiplier_values()
    if self.lr_multipliers and self.optimizer not in ("sgd", "sgd_torch"):
      raise ConfigError(
        "train.lr_multipliers scale gradients, which leaves an Adam step unchanged: "
        "use them with train.optimizer=sgd"
      )

  def lr_multiplier_values(self) -> dict[str, float]:
    """{part: multiplier} of every part in LR_MULTIPLIER_PARTS (1.0 unless lr_multipliers says).

    Raises:
      ConfigError: naming train.lr_multipliers, for an unknown part, a repeated
        one, or a value that is not a positive number.
    """
    values = dict.fromkeys(LR_MULTIPLIER_PARTS, 1.0)
    given = set()
    for item in filter(None, (i.strip() for i in self.lr_multipliers.replace(";", ",").split(","))):
      part, sep, number = (s.strip() for s in item.partition("="))
      if not sep or part not in values:
        raise ConfigError(
          f"train.lr_multipliers: {item!r} is not <part>=<number> with a part of "
          f"{', '.join(LR_MULTIPLIER_PARTS)}"
        )
      if part in given:
        raise ConfigError(f"train.lr_multipliers: {part} is given twice")
      try:
        value = float(number)
      except ValueError:
        value = float("nan")
      if not value > 0 or value == float("inf"):
        raise ConfigError(
          f"train.lr_multipliers: {part}={number!r} must be a positive number (to keep a part "
          "fixed, use freeze_backbone_steps for the backbone)"
        )
      values[part] = value
      given.add(part)
    return values
