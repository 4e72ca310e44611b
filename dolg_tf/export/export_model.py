"""`dolg-export --logdir=runs/demo`: exports a training run's checkpoint for TF Serving.

The command only turns flags into one call of `versions.export_from_checkpoint`:
the run's config.json, `--params_override`, then one flag per field of the
export section (`--image_scales`, `--max_image_size`, `--precision`, ...,
generated from io.export_section.ExportConfig) give the export config; the SavedModel
(serving_graph) is written as the next version folder of `--export_base`
(default `<logdir>/export`, see versions).
"""

from absl import flags

from dolg_tf import config as config_lib
from dolg_tf.export import versions
from dolg_tf.model import checkpoint_restore
from dolg_tf.utils import cli

# The config sections whose fields get a flag each.
FIELD_FLAG_SECTIONS = ("export",)


def _define_field_flags(flag_values: flags.FlagValues) -> dict[str, str]:
  """One flag per export field (named as the field); returns flag -> field path."""
  return cli.define_config_flags(
    config_lib.ExperimentConfig(),
    sections=FIELD_FLAG_SECTIONS,
    flag_values=flag_values,
    default_help="the run's config.json",
  )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags (a second call is a no-op)."""
  if "logdir" not in flag_values:
    flags.DEFINE_string(
      "logdir", "", "Training run folder (config.json, checkpoints/).", flag_values=flag_values
    )
    flags.DEFINE_string(
      "checkpoint",
      "",
      "Checkpoint prefix; default: the latest in --logdir.",
      flag_values=flag_values,
    )
    flags.DEFINE_string(
      "export_base", "", "TF Serving model base; default <logdir>/export.", flag_values=flag_values
    )
    flags.DEFINE_integer("version", 0, "Version folder; 0 = next free.", flag_values=flag_values)
    flags.DEFINE_string(
      "params_override",
      "",
      "Overrides of the run's config, e.g. 'export.max_image_size=512'.",
      flag_values=flag_values,
    )
  _define_field_flags(flag_values)


def overrides_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict:
  """--params_override, then the field flags given (they win), as one nested dict.

  Raises:
    config_lib.ConfigError: a bad --params_override.
  """
  overrides = config_lib.parse_overrides(flag_values.params_override)
  given = cli.given_overrides(_define_field_flags(flag_values), flag_values)
  for section, fields in given.items():
    overrides.setdefault(section, {}).update(fields)
  return overrides


def main(argv):
  del argv  # unused
  values = flags.FLAGS
  if not values.logdir:
    raise cli.UserError("--logdir is required")
  if values.version < 0:
    raise cli.UserError(
      f"--version: {values.version} is negative; TF Serving loads only version folders named "
      "by a non-negative integer (0 = the next free number)"
    )
  try:
    export_dir = versions.export_from_checkpoint(
      cli.resolve_path(values.logdir),
      cli.resolve_path(values.checkpoint),
      cli.resolve_path(values.export_base),
      values.version or None,
      overrides_from_flags(values),
    )
  except (
    FileNotFoundError,
    FileExistsError,
    config_lib.ConfigError,
    checkpoint_restore.CheckpointMismatchError,
    versions.ExportError,
    OSError,  # e.g. the export folder's lock file cannot be created (permission denied)
  ) as e:
    raise cli.UserError(str(e)) from None
  print(f"SavedModel: {export_dir}")


def run():
  """The `dolg-export` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
