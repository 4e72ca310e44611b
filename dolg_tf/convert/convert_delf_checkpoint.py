"""Converts a TF2 DELG training checkpoint of the DELF code base into this project's artefacts.

  dolg-convert-delf --checkpoint=<delf logdir or ckpt prefix> --output_dir=runs/delg_r50 \
      [--noblock3_strides] [--import_head]

Reads what DELF's train.py writes (`<logdir>/delf_tf2-ckpt/ckpt-N`, or
`<logdir>/delf_weights`) and writes <output_dir>/config.json, checkpoints/ckpt-1
(tf.train.Checkpoint with `model`, and `head` with --import_head) and export/1
(SavedModel). See dolg_tf.convert.delf_checkpoint for the mapping.
"""

from absl import app, flags, logging

from dolg_tf import config as config_lib
from dolg_tf.convert import delf_checkpoint
from dolg_tf.export import export_model
from dolg_tf.utils import cli

FLAGS = flags.FLAGS

flags.DEFINE_string(
  "checkpoint", None, "DELF training logdir, checkpoint folder, or checkpoint prefix."
)
flags.DEFINE_string("output_dir", None, "New or empty output folder.")
flags.DEFINE_bool("block3_strides", True, "As DELF's --block3_strides (not stored in checkpoints).")
flags.DEFINE_float("gem_power", 3.0, "DELF's GeM power (not stored in checkpoints).")
flags.DEFINE_float("arcface_margin", 0.1, "DELF's --arcface_margin (not stored in checkpoints).")
flags.DEFINE_bool("import_head", False, "Also import cosine_weights as an ArcFace head.")
flags.DEFINE_integer(
  "max_image_size", None, "Export: cap on the largest side (default: ExportConfig's)."
)
flags.DEFINE_list("image_scales", None, "Export pyramid scales (default: ExportConfig's).")
cli.define_override(flags.DEFINE_string, "precision", export_model.PRECISION_HELP)
flags.mark_flags_as_required(["checkpoint", "output_dir"])


def _export_config() -> config_lib.ExportConfig:
  overrides = {}
  if FLAGS.image_scales:
    try:
      overrides["image_scales"] = tuple(float(s) for s in FLAGS.image_scales)
    except ValueError:
      raise cli.UserError(
        f"--image_scales: expected numbers, got {','.join(FLAGS.image_scales)}"
      ) from None
  if FLAGS.max_image_size is not None:
    overrides["max_image_size"] = FLAGS.max_image_size
  if FLAGS.precision is not None:
    overrides["precision"] = FLAGS.precision
  try:
    return config_lib.ExportConfig(**overrides)
  except config_lib.ConfigError as e:
    raise cli.UserError(str(e)) from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    paths = delf_checkpoint.convert_delf_checkpoint(
      cli.resolve_path(FLAGS.checkpoint),
      cli.resolve_path(FLAGS.output_dir),
      block3_strides=FLAGS.block3_strides,
      gem_p=FLAGS.gem_power,
      arcface_margin=FLAGS.arcface_margin,
      import_head=FLAGS.import_head,
      export_config=_export_config(),
    )
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from e
  for name, path in paths.items():
    logging.info("%s: %s", name, path)
    print(f"{name}: {path}")


def run():
  """The `dolg-convert-delf` command."""
  cli.run(main)


if __name__ == "__main__":
  run()
