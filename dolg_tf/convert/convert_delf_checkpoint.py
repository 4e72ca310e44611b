"""Converts a TF2 DELG training checkpoint of the DELF code base into this project's artefacts.

  dolg-convert-delf --checkpoint=<delf logdir or ckpt prefix> --output_dir=runs/delg_r50 \
      [--noblock3_strides] [--import_head]

Reads what DELF's train.py writes (`<logdir>/delf_tf2-ckpt/ckpt-N`, or
`<logdir>/delf_weights`) and writes <output_dir>/config.json, checkpoints/ckpt-1
(tf.train.Checkpoint with `model`, and `head` with --import_head) and export/1
(SavedModel). See dolg_tf.convert.delf_checkpoint for the mapping. The export
section's fields have a flag each (--image_scales, --max_image_size,
--precision, ...; defaults: ExportConfig's).
"""

from absl import app, flags, logging

from dolg_tf import config as config_lib
from dolg_tf.convert import delf_checkpoint
from dolg_tf.utils import cli

FLAGS = flags.FLAGS


def _define_export_flags(flag_values: flags.FlagValues) -> dict[str, str]:
  """One flag per export field (defaults: ExportConfig's); returns flag -> field path."""
  return cli.define_config_flags(
    config_lib.ExperimentConfig(), sections=("export",), flag_values=flag_values
  )


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags (a second call is a no-op)."""
  if "arcface_margin" not in flag_values:
    flags.DEFINE_string(
      "checkpoint",
      None,
      "DELF training logdir, checkpoint folder, or checkpoint prefix.",
      flag_values=flag_values,
    )
    flags.DEFINE_string("output_dir", None, "New or empty output folder.", flag_values=flag_values)
    flags.DEFINE_bool(
      "block3_strides",
      True,
      "As DELF's --block3_strides (not stored in checkpoints).",
      flag_values=flag_values,
    )
    flags.DEFINE_float(
      "gem_power", 3.0, "DELF's GeM power (not stored in checkpoints).", flag_values=flag_values
    )
    flags.DEFINE_float(
      "arcface_margin",
      0.1,
      "DELF's --arcface_margin (not stored in checkpoints).",
      flag_values=flag_values,
    )
    flags.DEFINE_bool(
      "import_head",
      False,
      "Also import cosine_weights as an ArcFace head.",
      flag_values=flag_values,
    )
    flags.mark_flags_as_required(["checkpoint", "output_dir"], flag_values=flag_values)
  _define_export_flags(flag_values)


def export_config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.ExportConfig:
  """ExportConfig() with the export flags given (cli.UserError naming a bad field)."""
  given = cli.given_overrides(_define_export_flags(flag_values), flag_values)
  try:
    return config_lib.override(config_lib.ExperimentConfig(), given).export
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
      export_config=export_config_from_flags(),
    )
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from e
  for name, path in paths.items():
    logging.info("%s: %s", name, path)
    print(f"{name}: {path}")


def run():
  """The `dolg-convert-delf` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
