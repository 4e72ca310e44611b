"""Converts an official DOLG PyTorch checkpoint (.pyth) into this project's artefacts.

  python -m dolg_tf.convert.convert_official_dolg --checkpoint=r101_dolg_512.pyth \
      --output_dir=runs/official_r101 [--depth=auto] [--import_head]

Writes <output_dir>/config.json, checkpoints/ckpt-1 (tf.train.Checkpoint
with `model`, and `head` with --import_head), export/1 (SavedModel) and
dolg_official.pbtxt (extraction config pointing at the export). Needs torch to
read .pyth files (an .npz of the state dict works without it). See
dolg_tf.convert.official_dolg for the mapping and the input convention.
"""

import os

from absl import app, flags, logging

from dolg_tf.convert import official_dolg
from dolg_tf.export import export_model
from dolg_tf.io import savedmodel_contract
from dolg_tf.utils import cli

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "Official DOLG checkpoint (.pyth/.pth, or .npz).")
flags.DEFINE_string("output_dir", None, "New or empty output folder.")
flags.DEFINE_string("depth", "auto", "ResNet depth (26, 50, 101, 152) or 'auto' (from the keys).")
flags.DEFINE_bool("import_head", False, "Also import desc_cls as a CurricularFace head.")
flags.DEFINE_list(
  "atrous_dilations", None, "Multi-atrous dilations (not stored in checkpoints); default 6,12,18."
)
flags.DEFINE_float("fixed_gem_p", 3.0, "GeM p for checkpoints without a learnable pool_g.p.")
flags.DEFINE_integer(
  "max_image_size",
  -1,
  "Export / extraction: cap on the largest side; -1 = none (the official evaluation). "
  "DELF-style: 1024.",
)
flags.DEFINE_list(
  "image_scales",
  [f"{s:g}" for s in savedmodel_contract.PYRAMID_PRESETS["official_5"]],
  "Export / extraction pyramid scales (default: the official evaluation's five). "
  "DELF-style: 0.7071,1,1.4142.",
)
cli.define_override(flags.DEFINE_string, "precision", export_model.PRECISION_HELP)
flags.mark_flags_as_required(["checkpoint", "output_dir"])


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


def _float_list(name: str, values: list[str]) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError:
    raise cli.UserError(f"--{name}: expected numbers, got {','.join(values)}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  dilations = _int_list("atrous_dilations", FLAGS.atrous_dilations)
  scales = _float_list("image_scales", FLAGS.image_scales)
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
      max_image_size=FLAGS.max_image_size,
      image_scales=scales,
      precision=FLAGS.precision or "float32",
    )
  except (OSError, ImportError, ValueError) as e:
    raise cli.UserError(str(e)) from e
  for name, path in paths.items():
    logging.info("%s: %s", name, path)
    print(f"{name}: {path}")


def run():
  """The `dolg-convert` command."""
  cli.run(main)


if __name__ == "__main__":
  run()
