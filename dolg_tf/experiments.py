"""Named experiments: presets over the one set of config defaults (dolg_tf.config).

    config = experiments.get("dolg_gldv2")          # an ExperimentConfig

As the Model Garden's experiment factory: a name picks the preset, then files,
--params_override and flags override its fields.

- dolg_gldv2: exactly the field defaults (R50, 512 px, batch 64, lr 0.01, ArcFace
  s=30 m=0.15: the paper's loss and size with the official code's optimizer).
  Give the TFRecords and a schedule.
- delg_gldv2: DELG's network (DELG_MODEL: DELF's R50 layout with
  block3_strides, as DELF trains it) with the same training defaults.
- dolg_synthetic / delg_synthetic: the README's main job: generated synthetic
  landmarks and a small network that trains in about two minutes on 2 CPU
  cores (`bazel run //dolg_tf:train` with no flags).

Published recipes (docs/RECIPES.md: each value and the source line it comes
from, what dolg_tf cannot express, the commands):

- official_dolg_r101: the official DOLG code's configs/resnet101_delg_8gpu.yaml.
- dolg_paper_512: the DOLG paper's setting where it differs from that file.
- glr2021_effnet_b7_stage1/2/3, glr2021_effnet_b5_stage3,
  glr2021_effnet_b6_stage3: the GLR 2021 winner's DOLG-EfficientNet configs
  (sub-center ArcFace, dynamic margins); each later B7 stage starts from the
  previous stage's run (train.init_from).
- delg_delf: DELG as DELF's training/train.py trains it (its flag defaults).
"""

from dolg_tf import config as config_lib

# Small enough for a 2-core CPU. The margin head's scale follows DELG's
# sqrt(embedding_dim) rule: trained from scratch, 128-d embeddings with s=30
# collapse (every descriptor and class weight in one direction, loss stuck at
# ln(num_classes)); s=11.3 learns.
_SYNTHETIC_MODEL = dict(
  backbone_depth=26,
  backbone_width_multiplier=0.25,
  local_dim=128,
  embedding_dim=128,
  head_scale=11.31,
)
# 96 px crops of 128 px views: crops below ~1/3 of the area lose the scene.
# Peak LR: DOLG 0.02. With 0.05 (the earlier default) the 600-step DOLG run
# collapsed on an Intel Xeon (AMX) machine of this kind (accuracy back to
# chance after step ~200, loss at ln(16); the same with the earlier code),
# while 0.02 reached validation accuracy 0.83. DELG keeps 0.05 (validation
# accuracy 0.91 there; 0.02 gave 0.93 but a weaker local head: GV mAP 78/67/41
# vs 86/73/47).
_SYNTHETIC_DATA = dict(
  dataset_version="synthetic", synthetic_classes=16, image_size=96, min_crop_area=0.35
)
_SYNTHETIC_TRAIN = dict(
  batch_size=32,
  max_steps=600,
  warmup_steps=50,
  initial_lr=0.05,
  clip_norm=10.0,
  checkpoint_every=100,
)

_PRESETS = {
  "dolg_gldv2": {},
  "delg_gldv2": {"model": config_lib.DELG_MODEL},
  "dolg_synthetic": {
    "model": _SYNTHETIC_MODEL,
    "data": _SYNTHETIC_DATA,
    "train": dict(_SYNTHETIC_TRAIN, initial_lr=0.02),
  },
  "delg_synthetic": {
    "model": dict(
      config_lib.DELG_MODEL,
      **_SYNTHETIC_MODEL,
      delg_reduced_dim=32,
      delg_attention_hidden=64,
      # DELF's layout, but local features at stride 16: at stride 32 the 128 px
      # views give 4x4 keypoint grids and re-ranking hurts (demo mAP E/M/H: global
      # 92.5/80.2/54.9 -> + GV 82.2/67.2/30.3; at stride 16 88.9/71.6/41.2 -> 87.7/
      # 73.7/46.7; the global branch is the same network either way, the global
      # gap is run-to-run training noise). DELF's stride 32 is for ~1024 px images.
      block3_strides=False,
    ),
    "data": _SYNTHETIC_DATA,
    "train": _SYNTHETIC_TRAIN,
  },
}
# The official DOLG code (feymanpriv/DOLG), configs/resnet101_delg_8gpu.yaml; the
# line of each value is in docs/RECIPES.md. Its `Arcface` head class is a
# CurricularFace (docs/TRAINING_PARITY.md); its schedule is pycls' per-epoch one
# (core/config.py: OPTIM.WARMUP_FACTOR 0.1). TRAIN.BATCH_SIZE is the total
# mini-batch over its NUM_GPUS 8 (dolg_tf's batch_size is global too).
_OFFICIAL_DOLG_R101 = {
  "model": dict(
    backbone="resnet",
    backbone_depth=101,
    backbone_layout="pycls",
    embedding_dim=512,
    head_type="curricularface",
    head_scale=30.0,
    head_margin=0.15,
  ),
  "data": dict(dataset_version="gld_v2_clean", image_size=224),
  "train": dict(
    batch_size=64,
    epochs=100,
    initial_lr=0.01,
    lr_schedule="cosine",
    warmup_epochs=5.0,
    warmup_factor=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-4,
    lr_per_epoch=True,
    optimizer="sgd_torch",
  ),
}
# The DOLG paper (arXiv 2108.02927, section 4.1) where it differs from the file
# above, as the official repository's issue threads quote it (docs/RECIPES.md):
# 512 px training images, batch 128, initial learning rate 0.05, ArcFace, the
# multi-atrous module with dilations 3/6/9. Everything else as the file.
_DOLG_PAPER_512 = {
  "model": dict(
    _OFFICIAL_DOLG_R101["model"],
    head_type="arcface",
    use_multi_atrous=True,
    atrous_dilations=(3, 6, 9),
  ),
  "data": dict(_OFFICIAL_DOLG_R101["data"], image_size=512),
  "train": dict(_OFFICIAL_DOLG_R101["train"], batch_size=128, initial_lr=0.05),
}


def _glr2021(
  backbone, dilations, image_size, initial_lr, weight_decay, epochs, batch_size, init_from=""
):
  """A GLR 2021 winner's DOLG-EfficientNet stage (ChristofHenkel/kaggle-landmark-2021-1st-place).

  Common to its configs: local and global dims 1024, embedding 512, GeM with
  trainable p, the multi-atrous module, sub-center ArcFace (k=3) with s=45 and
  per-class margins 0.05 + 0.45 * unit(n^-1/4) (default_config.py: arcface_m_x
  0.45, arcface_m_y 0.05; data/ch_ds_1.py), cosine schedule with 1 warm-up
  epoch, mixed precision, 81313 classes, PyTorch's Adam (default_config.py
  cfg.optimizer = "Adam"; its weight_decay is coupled, as train.weight_decay).
  """
  train = dict(
    optimizer="adam",
    batch_size=batch_size,
    epochs=epochs,
    initial_lr=initial_lr,
    lr_schedule="cosine",
    warmup_epochs=1.0,
    weight_decay=weight_decay,
    mixed_precision="mixed_float16",
  )
  if init_from:
    train["init_from"] = init_from
  return {
    "model": dict(
      backbone=backbone,
      use_multi_atrous=True,
      atrous_dilations=dilations,
      local_dim=1024,
      embedding_dim=512,
      gem_p=3.0,
      gem_p_trainable=True,
      head_type="subcenter_arcface",
      head_num_subcenters=3,
      head_scale=45.0,
      head_margin=0.05,
      head_margin_max=0.5,
    ),
    "data": dict(dataset_version="gld_v2_clean", image_size=image_size),
    "train": train,
  }


# Where each B7 stage's run lives by default: the next stage starts from it.
GLR2021_B7_RUNS = tuple(f"runs/glr2021_effnet_b7_stage{i}" for i in (1, 2, 3))

# DELF's research/delf/delf/python/training/train.py with its flag defaults and
# --delg_global_features, on GLDv2-clean as its README's command: SGD momentum
# 0.9 (no Nesterov, no weight decay), lr 0.01 decayed linearly to 0 over
# max_iters 500000, batch 32, 321 px, global-norm clipping at 10; the DELG head
# (GeM 3, 2048-d, ArcFace s=45.25 m=0.1) and autoencoder 128 are DELG_MODEL's
# and the model defaults; loss weights attention 1, reconstruction 10 are
# dolg_tf's fixed DELG weights (training/train_step.py).
_DELG_DELF = {
  "model": dict(config_lib.DELG_MODEL, backbone_depth=50, delg_reduced_dim=128),
  "data": dict(dataset_version="gld_v2_clean", image_size=321, min_crop_area=0.08),
  "train": dict(
    batch_size=32,
    max_steps=500000,
    initial_lr=0.01,
    lr_schedule="linear",
    warmup_steps=0,
    warmup_epochs=0.0,
    momentum=0.9,
    nesterov=False,
    weight_decay=0.0,
    clip_norm=10.0,
    lr_per_epoch=False,
  ),
}

_PRESETS.update(
  {
    "official_dolg_r101": _OFFICIAL_DOLG_R101,
    "dolg_paper_512": _DOLG_PAPER_512,
    # configs/cfg_ch_dolg_b7_step1.py, _step2.py, _step3.py.
    "glr2021_effnet_b7_stage1": _glr2021("efficientnet_b7", (3, 6, 9), 256, 1e-4, 1e-4, 10, 64),
    "glr2021_effnet_b7_stage2": _glr2021(
      "efficientnet_b7", (3, 6, 9), 448, 1e-4, 1e-4, 40, 20, GLR2021_B7_RUNS[0]
    ),
    "glr2021_effnet_b7_stage3": _glr2021(
      "efficientnet_b7", (3, 6, 9), 448, 5e-5, 1e-4, 15, 4, GLR2021_B7_RUNS[1]
    ),
    # configs/cfg_ch_dolg_b5_step3.py (weight_decay left at default_config's 0)
    # and cfg_ch_dolg_b6_step3.py; their earlier steps are not published.
    "glr2021_effnet_b5_stage3": _glr2021("efficientnet_b5", (6, 12, 18), 768, 5e-5, 0.0, 7, 10),
    "glr2021_effnet_b6_stage3": _glr2021("efficientnet_b6", (3, 6, 9), 768, 1e-4, 1e-4, 7, 10),
    "delg_delf": _DELG_DELF,
  }
)
NAMES = tuple(_PRESETS)
DEFAULT = "dolg_synthetic"


def get(name: str) -> config_lib.ExperimentConfig:
  """The ExperimentConfig of a named experiment.

  Raises:
    ConfigError: unknown name (the known ones are listed).
  """
  if name not in _PRESETS:
    raise config_lib.ConfigError(f"unknown experiment {name!r}; one of {list(NAMES)}")
  return config_lib.override(config_lib.ExperimentConfig(), _PRESETS[name])
