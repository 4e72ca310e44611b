r"""The `dolg-build-dataset-beam` command: GLDv2 CSV -> TFRecords on Apache Beam (beam_dataset.py).

    python -m dolg_tf.data.beam_build_dataset \
        --train_clean_csv_path=gldv2/train_clean.csv --train_directory=gldv2/train \
        --output_directory=gldv2/tfrecords --num_shards=128 \
        --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

Every flag of build_image_dataset except --num_workers and --log_interval
works; every other `--flag` is a Beam pipeline option (beam_cli). The output
folder is byte for byte build_image_dataset's for the same flags; a rerun
writes only the shards that are missing.
"""

import os

from absl import flags

from dolg_tf.data import beam_dataset, build_image_dataset
from dolg_tf.utils import beam_cli, cli

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags: build_image_dataset's but the local ones (idempotent)."""
  build_image_dataset.define_flags(flag_values, local=False)


def main(argv):
  options = beam_cli.pipeline_options(argv)
  if not FLAGS.train_directory or not FLAGS.output_directory:
    raise cli.UserError("--train_directory and --output_directory are required")
  try:
    summary, c = beam_dataset.run_pipeline(
      output_directory=os.path.abspath(FLAGS.output_directory),
      train_directory=os.path.abspath(FLAGS.train_directory),
      train_csv_path=cli.resolve_path(FLAGS.train_csv_path),
      train_clean_csv_path=cli.resolve_path(FLAGS.train_clean_csv_path),
      num_shards=FLAGS.num_shards,
      num_validation_shards=FLAGS.num_validation_shards or None,
      validation_split_size=FLAGS.validation_split_size,
      seed=FLAGS.seed,
      options=options,
    )
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from None
  print(
    f"{summary.num_train} train + {summary.num_validation} validation records of "
    f"{summary.num_classes} classes, {len(summary.failures)} failures -> "
    f"{FLAGS.output_directory} (this run: {c['shards_written']} shards written, "
    f"{c['shards_skipped']} skipped, {c['records_written']} records, "
    f"{c['images_failed']} failed images; {summary.seconds:.1f}s)"
  )
  return 0


def run():
  """The `dolg-build-dataset-beam` command."""
  define_flags()
  beam_cli.run(main)


if __name__ == "__main__":
  run()
