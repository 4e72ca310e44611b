r"""Descriptor extraction on Apache Beam: the same inputs and outputs as extract_features.

    # Two local worker processes (the DirectRunner):
    python -m dolg_tf.extraction.beam_extract --config=protos/dolg.pbtxt \
        --images_dir=images --output_dir=descriptors \
        --direct_num_workers=2 --direct_running_mode=multi_processing
    # Dataflow / Flink / Spark: see docs/SCALE_OUT.md.

Every input flag of extract_features works (input_flags.py: a folder, a list,
Revisited Oxford/Paris ground truth with --query_crop, a GLDv2 CSV; DELF's
aliases; --batch_size, --max_pixels), and every other `--flag` is a Beam
pipeline option (beam_cli.py); the default runner is the DirectRunner. What
the pipeline does: beam_pipeline.py. The config is checked against the
SavedModel on the launcher before any worker starts; paths are made absolute
for the workers.

Prints `done N, skipped N, failed N, <seconds>s -> <output_dir>` (the
pipeline's counters). Exit status: 0 on success, 1 if there was work and no
image has its files at the end, 2 on a bad flag, config, model, image list or
output folder.
"""

import dataclasses
import os

from absl import flags

from dolg_tf.extraction import beam_pipeline, input_flags, output_folder
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.utils import beam_cli, cli

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags: input_flags' (Beam's options are not absl flags)."""
  input_flags.define_flags(flag_values)


def main(argv):
  input_flags.check_run_flags()
  config, model_path, tasks = input_flags.read_inputs()
  options = beam_cli.pipeline_options(argv)
  # Workers may start in another folder: they get absolute paths.
  config_path = os.path.abspath(FLAGS.config)
  output_dir = os.path.abspath(FLAGS.output_dir)
  tasks = [dataclasses.replace(t, path=os.path.abspath(t.path)) for t in tasks]
  try:
    # The config is checked against the SavedModel here, before any worker starts.
    extractor_lib.Extractor(config, config_path, model_path=model_path)
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from e
  try:
    values = beam_pipeline.run_pipeline(
      config_path, tasks, output_dir, options, input_flags.batch_size(), FLAGS.max_pixels
    )
  except (output_folder.OutputError, ValueError) as e:
    raise cli.UserError(str(e)) from e
  print(
    f"done {values['done']}, skipped {values['skipped']}, failed {values['failed']}, "
    f"{values['seconds']:.1f}s -> {output_dir}"
  )
  return 1 if values["failed"] and not values["done"] + values["skipped"] else 0


def run():
  """The `dolg-extract-beam` command."""
  define_flags()
  beam_cli.run(main)


if __name__ == "__main__":
  run()
