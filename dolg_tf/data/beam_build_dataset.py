r"""The `dolg-build-dataset-beam` command: images -> TFRecords on Apache Beam (beam_dataset.py).

    python -m dolg_tf.data.beam_build_dataset \
        --train_clean_csv_path=gldv2/train_clean.csv --train_directory=gldv2/train \
        --output_directory=gldv2/tfrecords --num_shards=128 \
        --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
    python -m dolg_tf.data.beam_build_dataset --image_folder=photos --output_directory=mine

Every flag of build_image_dataset (a field of dataset_config.DatasetBuildConfig)
except --num_workers and --log_interval works; every other `--flag` is a Beam
pipeline option (beam_cli). The output folder is byte for byte
build_image_dataset's for the same flags; a rerun writes only the shards that
are missing.
"""

import dataclasses
import os

from absl import flags

from dolg_tf.data import beam_dataset, dataset_config
from dolg_tf.utils import beam_cli, cli

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """One flag per DatasetBuildConfig field but num_workers and log_interval (idempotent)."""
  dataset_config.define_flags(flag_values, local=False)


def main(argv):
  options = beam_cli.pipeline_options(argv)
  config = dataset_config.from_flags(FLAGS, local=False)
  # Absolute paths: the workers may start in another folder.
  config = dataclasses.replace(
    config,
    output_directory=os.path.abspath(config.output_directory),
    train_directory=cli.resolve_path(config.train_directory),
    train_csv_path=cli.resolve_path(config.train_csv_path),
    train_clean_csv_path=cli.resolve_path(config.train_clean_csv_path),
    image_folder=cli.resolve_path(config.image_folder),
    labels_csv=cli.resolve_path(config.labels_csv),
    images_dir=cli.resolve_path(config.images_dir),
  )
  try:
    summary, c = beam_dataset.run_pipeline(config, options=options)
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
