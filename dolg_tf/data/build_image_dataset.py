r"""The `dolg-build-dataset` command: training images -> TFRecords (DELF layout).

  python -m dolg_tf.data.build_image_dataset \
      --train_csv_path=gldv2/train.csv \
      --train_clean_csv_path=gldv2/train_clean.csv \
      --train_directory=gldv2/train \
      --output_directory=gldv2/tfrecords \
      --num_shards=128 --validation_split_size=0.2 --seed=0
  python -m dolg_tf.data.build_image_dataset --image_folder=photos --output_directory=mine
  python -m dolg_tf.data.build_image_dataset --labels_csv=mine.csv --images_dir=photos \
      --output_directory=mine --min_images_per_class=5

Inputs, one of:
  * --image_folder: your own images, one sub-folder per class (own_dataset.py);
  * --labels_csv: your own images as a CSV with columns path,label;
  * train.csv (columns id, url, landmark_id): one row per image; or
  * train_clean.csv (columns landmark_id, images): one row per landmark, its
    image ids separated by spaces. When given, it selects the images (the
    'clean' subset, 81313 classes); train.csv is then only cross-checked.
  * images as `<train_directory>/<id[0]>/<id[1]>/<id[2]>/<id>.jpg` (the layout
    of the GLDv2 tar files) or `<train_directory>/<id>.jpg`; `.jpeg` and
    `.png` are tried after `.jpg`.

What it does:
  * Relabels the landmark ids of the CSV to contiguous labels 0..C-1 in
    ascending landmark id order, over every class of the CSV (so C is 81313 for
    train_clean.csv, whatever was downloaded), and writes the mapping to
    `relabeling.csv` (landmark_id,label). Own classes: names in numeric order
    if all are integers, else by name (`relabeling.csv` has class,label).
  * Drops the classes with fewer listed images than --min_images_per_class
    (default 1: only empty class folders) and lists them in
    `dropped_classes.csv` (class,images).
  * Splits the images that exist into train and validation per image,
    stratified by class: the validation set has round(fraction * N) images,
    each class contributes in proportion to its size (largest remainders, ties
    broken by the seed), and every class keeps at least one training image.
    The choice of images within a class and the order of records are random
    with --seed. Record k of a split goes to shard k % num_shards, so every
    shard is determined by the inputs alone (beam_dataset.py writes the same
    bytes shard by shard on many machines). Corrupt files are only found while
    writing and are dropped from whichever split they were assigned to.
  * Keeps plain RGB JPEGs byte for byte; re-encodes everything else
    (PNG, grayscale, RGBA, CMYK, 16-bit, EXIF-rotated, ...) as RGB JPEG.
  * Never aborts on a bad image: missing and unreadable ones are logged and
    listed in `failures.csv` (id,path,reason).

Outputs in --output_directory: `train-NNNNN-of-MMMMM`,
`validation-NNNNN-of-MMMMM` (if the split is non-empty), `relabeling.csv`,
`failures.csv`, `dropped_classes.csv`, and for evaluation (split_lists.py)
`train_images.txt`, `validation_images.txt`, `image_labels.csv`,
`validation_solution.csv`. Every file appears atomically (temporary name, then rename).
A rerun after an interruption keeps the shards that were finished and writes the
others (dataset_writer: the hidden `.build/` holds their done records until the
build is complete).

Every flag is a field of dataset_config.DatasetBuildConfig (generated from
it; a given flag overrides the field's default). The library behind it:
gldv2_files (CSV readers, image layout), own_dataset (class folders, path,label
CSVs), dataset_plan (relabeling, split, shards) and dataset_writer
(conversion, TFRecords, CSVs).
"""

import os

from absl import app, flags

from dolg_tf.data import dataset_config
from dolg_tf.utils import cli

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """One flag per dataset_config.DatasetBuildConfig field (a second call is a no-op).

  --output_directory: required; a source: --image_folder, or --labels_csv
  (--images_dir, --allow_outside_images_dir), or --train_directory with
  --train_csv_path and/or --train_clean_csv_path; --min_images_per_class (1);
  --num_shards (128), --num_validation_shards (0:
  num_shards), --validation_split_size (0.2), --seed (0), --num_workers (one
  per CPU), --log_interval (30 s). The config's docstring says what each means.
  """
  dataset_config.define_flags(flag_values, local=True)


def run_with_flags(flag_values: flags.FlagValues) -> int:
  """Runs the conversion the (parsed) flags describe; returns 0 (bad images: failures.csv).

  Raises:
    cli.UserError: a missing flag, a bad value or CSV file, an unwritable
      output folder (`cli.run` prints it as one line and exits with status 2).
  """
  config = dataset_config.from_flags(flag_values, local=True)
  # Here, so that `--help` and flag errors answer before TensorFlow loads.
  from dolg_tf.data import dataset_writer  # noqa: PLC0415

  try:
    summary = dataset_writer.build_dataset(config)
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from None
  print(
    f"{summary.num_train} train + {summary.num_validation} validation records of "
    f"{summary.num_classes} classes, {len(summary.failures)} failures, "
    f"{len(summary.dropped_classes)} classes dropped -> {config.output_directory}"
  )
  print(training_hint(summary, config.output_directory))
  return 0


def training_hint(summary, output_directory: str) -> str:
  """The dolg-train flags that read this dataset (shard patterns and class count)."""
  validation = ""
  if summary.validation_files:
    validation = f" --validation_file_pattern='{os.path.join(output_directory, 'validation-*')}'"
  return (
    f"train on it: dolg-train --train_file_pattern='{os.path.join(output_directory, 'train-*')}'"
    f"{validation} --num_classes={summary.num_classes}"
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  return run_with_flags(FLAGS)


def run():
  """The `dolg-build-dataset` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
