"""Converts an official DOLG PyTorch checkpoint (.pyth) into this project's artefacts.

  python -m dolg_tf.convert.convert_official_dolg --checkpoint=r101_dolg_512.pyth \
      --output_dir=runs/official_r101 [--depth=auto] [--import_head]

Writes <output_dir>/config.json, checkpoints/ckpt-1 (tf.train.Checkpoint
with `model`, and `head` with --import_head), export/1 (SavedModel) and
dolg_official.pbtxt (extraction config pointing at the export). Needs torch to
read .pyth files (an .npz of the state dict works without it). See
dolg_tf.convert.official_dolg for the mapping and the input convention.

The export flags (--image_scales, --max_image_size, --precision) override the
export section's fields; their defaults here are the official evaluation's
(EXPORT_DEFAULTS: its five scales, no size cap).
"""

import dataclasses
import os

from absl import app, flags, logging

from dolg_tf import config as config_lib
from dolg_tf.convert import official_dolg
from dolg_tf.io import savedmodel_contract
from dolg_tf.utils import cli

FLAGS = flags.FLAGS

# The converter's export defaults: the official evaluation's pyramid with no size
# cap (DELF-style instead: --image_scales=0.7071,1,1.4142 --max_image_size=1024).
EXPORT_DEFAULTS = config_lib.ExportConfig(
  image_scales=savedmodel_contract.PYRAMID_PRESETS["official_5"], max_image_size=-1
)
# The export fields with a flag: the ones convert_official_checkpoint takes.
EXPORT_FLAG_FIELDS = ("image_scales", "max_image_size", "precision")


def _define_export_flags(flag_values: flags.FlagValues) -> dict[str, str]:
  """--image_scales, --max_image_size, --precision (export.*); returns flag -> field path."""
  skip = [f"export.{f.name}" for f in dataclasses.fields(EXPORT_DEFAULTS)]
  return cli.define_config_flags(
    config_lib.ExperimentConfig(export=EXPORT_DEFAULTS),
    sections=("export",),
    skip=[path for path in skip if path.split(".")[1] not in EXPORT_FLAG_FIELDS],
    flag_values=flag_values,
  )


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags (a second call is a no-op)."""
  if "fixed_gem_p" not in flag_values:
    flags.DEFINE_string(
      "checkpoint",
      None,
      "Official DOLG checkpoint (.pyth/.pth, or .npz).",
      flag_values=flag_values,
    )
    flags.DEFINE_string("output_dir", None, "New or empty output folder.", flag_values=flag_values)
    flags.DEFINE_string(
      "depth",
      "auto",
      "ResNet depth (26, 50, 101, 152) or 'auto' (from the keys).",
      flag_values=flag_values,
    )
    flags.DEFINE_bool(
      "import_head",
      False,
      "Also import desc_cls as a CurricularFace head.",
      flag_values=flag_values,
    )
    flags.DEFINE_list(
      "atrous_dilations",
      None,
      "Multi-atrous dilations (not stored in checkpoints); default 6,12,18.",
      flag_values=flag_values,
    )
    flags.DEFINE_float(
      "fixed_gem_p",
      3.0,
      "GeM p for checkpoints without a learnable pool_g.p.",
      flag_values=flag_values,
    )
    flags.mark_flags_as_required(["checkpoint", "output_dir"], flag_values=flag_values)
  _define_export_flags(flag_values)


def export_config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.ExportConfig:
  """EXPORT_DEFAULTS with the export flags given (cli.UserError naming a bad field)."""
  given = cli.given_overrides(_define_export_flags(flag_values), flag_values)
  try:
    return config_lib.override(config_lib.ExperimentConfig(export=EXPORT_DEFAULTS), given).export
  except config_lib.ConfigError as e:
    raise cli.UserError(str(e)) from None


def _parse_depth(value: str) -> int | None:
  if value == "auto":
    return None
  try:
    return int(value)
  except ValueError:
    raise app.UsageError(f"--depth must be 'auto' or an integer, got {value!r}") from None


def _int_list(name: str, values: list[str] | None) -> list[int] | None:
  try:
    return [int(v) for v in values] if values else None
  except ValueError:
    raise cli.UserError(f"--{name}: expected integers, got {','.join(values)}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  dilations = _int_list("atrous_dilations", FLAGS.atrous_dilations)
  export_config = export_config_from_flags()
  checkpoint = cli.resolve_path(FLAGS.checkpoint)
  if not os.path.isfile(checkpoint):
    what = "is a folder, not a file" if os.path.isdir(checkpoint) else "no such file"
    raise cli.UserError(f"--checkpoint: {checkpoint}: {what}")
  if not os.access(checkpoint, os.R_OK):
    raise cli.UserError(f"--checkpoint: {checkpoint}: not readable (permission denied)")
  try:
    paths = official_dolg.convert_official_checkpoint(
      checkpoint,
      cli.resolve_path(FLAGS.output_dir),
      depth=_parse_depth(FLAGS.depth),
      atrous_dilations=dilations,
      fixed_gem_p=FLAGS.fixed_gem_p,
      import_head=FLAGS.import_head,
      max_image_size=export_config.max_image_size,
      image_scales=export_config.image_scales,
      precision=export_config.precision,
    )
  except (OSError, ImportError, ValueError) as e:
    raise cli.UserError(str(e)) from e
  for name, path in paths.items():
    logging.info("%s: %s", name, path)
    print(f"{name}: {path}")


def run():
  """The `dolg-convert` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
