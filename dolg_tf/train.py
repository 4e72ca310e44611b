"""Trains DOLG with tf.distribute, writes checkpoints and a SavedModel.

  bazel run //dolg_tf:train                        # built-in synthetic landmarks, ~minutes on CPU
  python -m dolg_tf.train --train_file_pattern=gldv2/train-* \
      --validation_file_pattern=gldv2/validation-* --dataset_version=gld_v2_clean \
      --logdir=runs/r50 --backbone_depth=50 --image_size=512 --batch_size=64 --epochs=100 \
      --warmup_epochs=5 --initial_lr=0.01 --distribution_strategy=mirrored --num_gpus=8

With no --train_file_pattern, a small synthetic-landmarks training set is
generated under <logdir>/data (once) and a tiny model is trained on it, then
exported: the README's main job. Re-running with the same --logdir resumes from
the latest checkpoint.
"""

import os
import sys

from absl import app, flags, logging

from dolg_tf import config as config_lib
from dolg_tf.training import train_config as train_config_lib

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_string(
  "train_file_pattern", "", "Training TFRecords (GLDv2 layout). Empty: synthetic."
)
flags.DEFINE_string("validation_file_pattern", "", "Validation TFRecords (GLDv2 layout).")
flags.DEFINE_string("logdir", "runs/demo", "Checkpoints, summaries, configs and the export.")
flags.DEFINE_enum(
  "dataset_version",
  "gld_v2_clean",
  ["gld_v1", "gld_v2", "gld_v2_clean", "synthetic"],
  "Sets the number of classes (14951 / 203094 / 81313; synthetic: from the data).",
)
flags.DEFINE_integer("num_classes", 0, "Explicit number of classes (overrides dataset_version).")
flags.DEFINE_integer("synthetic_classes", 16, "Synthetic data: number of landmark classes.")
flags.DEFINE_integer("synthetic_views", 48, "Synthetic data: training views per class.")
# Schedule.
flags.DEFINE_integer("batch_size", 32, "Global batch size (over all replicas).")
flags.DEFINE_integer("image_size", 96, "Training image size (square).")
flags.DEFINE_float("min_crop_area", 0.08, "Random-resized crop: smallest relative area.")
flags.DEFINE_integer("max_steps", 0, "Total steps; 0 = epochs x steps per epoch.")
flags.DEFINE_integer("epochs", 0, "Epochs, if --max_steps is 0.")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch; 0 = count the training records.")
flags.DEFINE_float("initial_lr", 0.05, "Peak learning rate (official DOLG: 0.01 for batch 64).")
flags.DEFINE_enum("lr_schedule", "cosine", list(train_config_lib.LR_SCHEDULES), "LR decay.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps.")
flags.DEFINE_float("warmup_epochs", 0.0, "Warm-up in epochs (used if --warmup_steps is 0).")
flags.DEFINE_float("warmup_factor", 0.1, "Warm-up starts at this fraction of --initial_lr.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_bool("nesterov", True, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", 1e-4, "Coupled L2 weight decay (as the official DOLG).")
flags.DEFINE_float("clip_norm", 10.0, "Global-norm gradient clipping; 0 disables.")
# Model and head.
flags.DEFINE_enum("model", "dolg", ["dolg", "delg"], "Network: DOLG or DELG (paper defaults).")
flags.DEFINE_string("model_config", "", "JSON ModelConfig; the flags below override its fields.")
flags.DEFINE_integer("backbone_depth", None, "ResNet depth: 26, 50, 101, 152.")
flags.DEFINE_float("backbone_width_multiplier", None, "Backbone width multiplier.")
flags.DEFINE_enum("backbone_layout", None, ["pycls", "keras"], "Backbone layout.")
flags.DEFINE_bool("use_multi_atrous", None, "DOLG multi-atrous module.")
flags.DEFINE_list("atrous_dilations", None, "Multi-atrous dilations, e.g. 6,12,18 or 3,6,9.")
flags.DEFINE_bool("gem_p_trainable", None, "Learn the GeM power.")
flags.DEFINE_integer("local_dim", None, "Local branch / fc_t channels.")
flags.DEFINE_integer("embedding_dim", None, "Descriptor dimension.")
flags.DEFINE_enum("head", None, ["arcface", "curricularface", "subcenter_arcface"], "Margin head.")
flags.DEFINE_float("arcface_scale", None, "Margin head scale s.")
flags.DEFINE_float("arcface_margin", None, "Margin head margin m.")
# Runtime.
flags.DEFINE_enum(
  "mixed_precision", "float32", list(train_config_lib.MIXED_PRECISION_POLICIES), "Policy."
)
flags.DEFINE_enum(
  "distribution_strategy",
  "one_device",
  list(train_config_lib.STRATEGIES),
  "tf.distribute strategy; multi_worker_mirrored reads TF_CONFIG.",
)
flags.DEFINE_integer("num_gpus", 0, "GPUs for one_device/mirrored.")
flags.DEFINE_string("tpu", "", "TPU address for --distribution_strategy=tpu.")
flags.DEFINE_integer("seed", 0, "Random seed (weights, data order, augmentation).")
flags.DEFINE_integer("log_every", 20, "Steps between log lines and summaries.")
flags.DEFINE_integer("checkpoint_every", 100, "Steps between checkpoints.")
flags.DEFINE_integer("validate_every", 0, "Steps between validation runs; 0 = at the end only.")
flags.DEFINE_integer("validation_steps", 20, "Validation batches per run; 0 = all.")
flags.DEFINE_bool("export", True, "Write a SavedModel under <logdir>/export at the end.")
flags.DEFINE_bool("export_only", False, "Only export the latest checkpoint of --logdir.")
flags.DEFINE_string("imagenet_checkpoint", "", "Keras ImageNet .h5 weights for the backbone.")

# Default network of the built-in synthetic run: small enough for a 2-core CPU.
# The margin head's scale follows DELG's sqrt(embedding_dim) rule: trained from
# scratch, 128-d embeddings with s=30 collapse (every descriptor and class
# weight in one direction, loss stuck at ln(num_classes)); s=11.3 learns.
DEMO_MODEL = dict(
  backbone_depth=26,
  backbone_width_multiplier=0.25,
  local_dim=128,
  embedding_dim=128,
  head_scale=11.31,
)
# Schedule of the built-in synthetic run (flags given explicitly still win).
# 128-px training images: crops below ~1/3 of the area lose the scene.
DEMO_SCHEDULE = dict(max_steps=600, warmup_steps=50, min_crop_area=0.35)

_MODEL_FLAGS = {
  "backbone_depth": "backbone_depth",
  "backbone_width_multiplier": "backbone_width_multiplier",
  "backbone_layout": "backbone_layout",
  "use_multi_atrous": "use_multi_atrous",
  "gem_p_trainable": "gem_p_trainable",
  "local_dim": "local_dim",
  "embedding_dim": "embedding_dim",
  "head": "head_type",
  "arcface_scale": "head_scale",
  "arcface_margin": "head_margin",
}


def _resolve_path(path: str) -> str:
  """Resolves a relative command-line path against the caller's directory (bazel run)."""
  if not path or os.path.isabs(path) or "://" in path:
    return path
  return os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd()), path)


def model_config_from_flags(synthetic: bool) -> config_lib.ModelConfig:
  if FLAGS.model_config:
    values = config_lib.load_model_config(_resolve_path(FLAGS.model_config)).to_dict()
  else:
    base = config_lib.delg_config() if FLAGS.model == "delg" else config_lib.ModelConfig()
    values = base.to_dict()
    if synthetic:
      values.update(DEMO_MODEL)
      if FLAGS.model == "delg":
        values.update(embedding_dim=128, delg_reduced_dim=32, delg_attention_hidden=64)
  for flag_name, field in _MODEL_FLAGS.items():
    if FLAGS[flag_name].value is not None:
      values[field] = FLAGS[flag_name].value
  if FLAGS.atrous_dilations is not None:
    values["atrous_dilations"] = [int(d) for d in FLAGS.atrous_dilations]
  return config_lib.ModelConfig.from_dict(values)


def main(argv):
  del argv  # unused
  from dolg_tf.data import synthetic  # noqa: PLC0415 (keeps --help fast)
  from dolg_tf.training import trainer as trainer_lib  # noqa: PLC0415

  logdir = _resolve_path(FLAGS.logdir)
  train_pattern = _resolve_path(FLAGS.train_file_pattern)
  validation_pattern = _resolve_path(FLAGS.validation_file_pattern)
  is_synthetic = not train_pattern
  num_classes = FLAGS.num_classes
  dataset_version = FLAGS.dataset_version
  max_steps, epochs = FLAGS.max_steps, FLAGS.epochs
  if is_synthetic:
    data_dir = os.path.join(logdir, "data")
    train_pattern, validation_pattern, num_classes = synthetic.ensure_demo_data(
      data_dir,
      num_classes=FLAGS.synthetic_classes,
      views_per_class=FLAGS.synthetic_views,
      seed=FLAGS.seed,
    )
    dataset_version = "synthetic"
    for name, value in DEMO_SCHEDULE.items():
      if not FLAGS[name].present and not (name == "max_steps" and epochs):
        FLAGS[name].value = value
    max_steps = FLAGS.max_steps
  elif dataset_version == "synthetic" and not num_classes:
    raise app.UsageError("--dataset_version=synthetic needs --num_classes with your own files")
  if not max_steps and not epochs:
    raise app.UsageError("set --max_steps or --epochs")

  model_config = model_config_from_flags(is_synthetic)
  config = train_config_lib.TrainConfig(
    train_file_pattern=train_pattern,
    validation_file_pattern=validation_pattern,
    logdir=logdir,
    dataset_version=dataset_version,
    num_classes=num_classes,
    batch_size=FLAGS.batch_size,
    image_size=FLAGS.image_size,
    min_crop_area=FLAGS.min_crop_area,
    max_steps=max_steps,
    epochs=epochs,
    steps_per_epoch=FLAGS.steps_per_epoch,
    initial_lr=FLAGS.initial_lr,
    lr_schedule=FLAGS.lr_schedule,
    warmup_steps=FLAGS.warmup_steps,
    warmup_epochs=FLAGS.warmup_epochs,
    warmup_factor=FLAGS.warmup_factor,
    momentum=FLAGS.momentum,
    nesterov=FLAGS.nesterov,
    weight_decay=FLAGS.weight_decay,
    clip_norm=FLAGS.clip_norm,
    mixed_precision=FLAGS.mixed_precision,
    distribution_strategy=FLAGS.distribution_strategy,
    num_gpus=FLAGS.num_gpus,
    tpu=FLAGS.tpu,
    seed=FLAGS.seed,
    log_every=FLAGS.log_every,
    checkpoint_every=FLAGS.checkpoint_every,
    validate_every=FLAGS.validate_every,
    validation_steps=FLAGS.validation_steps,
    export_at_end=FLAGS.export,
    imagenet_checkpoint=_resolve_path(FLAGS.imagenet_checkpoint),
  )
  trainer = trainer_lib.Trainer(model_config, config)
  if not FLAGS.export_only:
    try:
      metrics = trainer.train()
    except trainer_lib.NonFiniteLossError as e:
      logging.error("%s", e)
      sys.exit(1)
    logging.info("Final metrics: %s", metrics)
    if metrics.get("interrupted"):
      return
  if config.export_at_end and trainer.is_chief:
    from dolg_tf.export import export_model  # noqa: PLC0415

    export_dir = export_model.export_saved_model(
      trainer.model, model_config, os.path.join(logdir, trainer_lib.EXPORT_SUBDIR)
    )
    print(f"SavedModel: {export_dir}")
  print(f"Checkpoints: {trainer.manager.directory}")


if __name__ == "__main__":
  app.run(main)
