"""Writes a planned dataset (dataset_plan, own_dataset) as TFRecord shards and three CSV files.

    summary = dataset_writer.build_dataset(dataset_config.DatasetBuildConfig(
        output_directory="gldv2/tfrecords", train_directory="gldv2/train",
        train_clean_csv_path="gldv2/train_clean.csv", num_shards=128, num_workers=8))

  * Keeps plain RGB JPEGs byte for byte; re-encodes everything else
    (PNG, grayscale, RGBA, CMYK, 16-bit, EXIF-rotated, ...) as RGB JPEG
    (image_codec, in worker processes with num_workers > 1).
  * Never aborts on a bad image: missing and unreadable ones are logged and
    listed in `failures.csv` (id,path,reason). Corrupt files are only found
    while writing and are dropped from whichever split they were assigned to.

Outputs in the output folder: `train-NNNNN-of-MMMMM`,
`validation-NNNNN-of-MMMMM` (if the split is non-empty), `relabeling.csv`
(landmark_id,label; class,label for own data), `failures.csv` and
`dropped_classes.csv` (classes under min_images_per_class, with their
images), and split_lists' files (image lists, labels and a validation
solution for extraction and recognition). Every file appears atomically
(temporary name, then rename). The command is build_image_dataset.py.
"""

import collections
import csv
import dataclasses
import io
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence

from absl import logging

from dolg_tf.data import dataset_plan, gldv2, image_codec, own_dataset, split_lists
from dolg_tf.data.dataset_config import DatasetBuildConfig
from dolg_tf.data.dataset_plan import TRAIN_PREFIX, VALIDATION_PREFIX, Failure, PlannedRecord
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import progress as progress_lib

RELABELING_FILENAME = "relabeling.csv"
FAILURES_FILENAME = "failures.csv"
DROPPED_FILENAME = "dropped_classes.csv"


@dataclasses.dataclass
class BuildSummary:
  """What `build_dataset` did.

  Attributes:
    num_classes: C, the number of labels (classes in the CSV).
    num_listed: images listed in the CSV.
    num_train: training records written.
    num_validation: validation records written.
    planned_validation_ids: ids assigned to validation before writing.
    failures: images that were skipped, with reasons.
    train_files: paths of the training shards.
    validation_files: paths of the validation shards.
    relabeling_path: the landmark_id,label (class,label) CSV.
    failures_path: the id,path,reason CSV.
    dropped_classes: classes left out (too few images) -> their images.
    dropped_path: the CSV of those classes.
    seconds: wall time.
  """

  num_classes: int = 0
  num_listed: int = 0
  num_train: int = 0
  num_validation: int = 0
  planned_validation_ids: list[str] = dataclasses.field(default_factory=list)
  failures: list[Failure] = dataclasses.field(default_factory=list)
  train_files: list[str] = dataclasses.field(default_factory=list)
  validation_files: list[str] = dataclasses.field(default_factory=list)
  relabeling_path: str = ""
  failures_path: str = ""
  dropped_classes: dict = dataclasses.field(default_factory=dict)
  dropped_path: str = ""
  seconds: float = 0.0


def _write_csv(path: str, rows: Iterable[Sequence], header: Sequence[str]) -> None:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  file_utils.atomic_write_text(path, buffer.getvalue())


def write_relabeling(path: str, mapping: dict, class_column: str = "landmark_id") -> None:
  """`relabeling.csv` (landmark_id,label; class,label for own data) in label order, atomically."""
  rows = sorted(mapping.items(), key=lambda item: item[1])
  _write_csv(path, rows, (class_column, "label"))


def write_dropped(path: str, dropped: dict, class_column: str = "landmark_id") -> None:
  """`dropped_classes.csv` (class,images: the classes left out, with their listed images)."""
  _write_csv(path, dropped.items(), (class_column, "images"))


def write_failures(path: str, failures: Iterable[Failure]) -> None:
  """`failures.csv` (id,path,reason), atomically."""
  _write_csv(path, [(f.image_id, f.path, f.reason) for f in failures], ("id", "path", "reason"))


def start_summary(plan: dataset_plan.DatasetPlan, output_directory: str) -> BuildSummary:
  """The summary of a build of `plan` before any record: counts, planned validation ids.

  Also writes `relabeling.csv` into `output_directory` (created if needed).
  """
  summary = BuildSummary(num_listed=plan.num_listed, num_classes=len(plan.mapping))
  summary.planned_validation_ids = sorted(
    r.image_id for r in plan.splits.get(VALIDATION_PREFIX, [])
  )
  summary.dropped_classes = dict(plan.dropped)
  os.makedirs(output_directory, exist_ok=True)
  summary.relabeling_path = os.path.join(output_directory, RELABELING_FILENAME)
  write_relabeling(summary.relabeling_path, plan.mapping, plan.class_column)
  summary.dropped_path = os.path.join(output_directory, DROPPED_FILENAME)
  write_dropped(summary.dropped_path, plan.dropped, plan.class_column)
  return summary


def _prepared_stream(tasks: list[tuple[str, str]], num_workers: int):
  """Yields image_codec.prepare_task(task) for every task, in order."""
  if num_workers <= 1 or len(tasks) < 2:
    for task in tasks:
      yield image_codec.prepare_task(task)
    return
  # 'spawn': workers only need Pillow, and forking a process that runs
  # TensorFlow threads is unsafe.
  context = multiprocessing.get_context("spawn")
  with context.Pool(num_workers) as pool:
    yield from pool.imap(image_codec.prepare_task, tasks, chunksize=8)


def convert(record: PlannedRecord, prepared_task) -> tuple[bytes | None, Failure | None, str]:
  """(serialized Example, None, re-encoding) of a converted image, or (None, Failure, "").

  Args:
    record: the planned record.
    prepared_task: image_codec.prepare_task's (id, PreparedImage or None, reason).
  """
  image_id, prepared, reason = prepared_task
  assert image_id == record.image_id
  if prepared is None:
    logging.warning("skipped %s: %s", image_id, reason)
    return None, Failure(image_id, record.path, reason), ""
  example = gldv2.make_example(
    image_id,
    prepared.jpeg,
    record.label,
    prepared.height,
    prepared.width,
    filename=os.path.basename(record.path),
  )
  return example.SerializeToString(deterministic=True), None, prepared.reencoded


def _write_records(
  plan: dataset_plan.DatasetPlan,
  writers: dict[str, gldv2.ShardedRecordWriter],
  shard_counts: dict[str, int],
  summary: BuildSummary,
  num_workers: int,
  log_interval: float,
) -> collections.Counter:
  """Converts every planned image into its split's writer; failures go to `summary`.

  Returns:
    How many images were re-encoded, by the first word of the reason.
  """
  work = [(split, record) for split, records in plan.splits.items() for record in records]
  progress = progress_lib.Progress(len(work), "converted", "img", log_interval)
  reencoded = collections.Counter()
  num_failed = 0
  stream = _prepared_stream([(r.image_id, r.path) for _, r in work], num_workers)
  for done, ((split, record), prepared) in enumerate(zip(work, stream), 1):
    serialized, failure, how = convert(record, prepared)
    if failure:
      num_failed += 1
      summary.failures.append(failure)
    else:
      if how:
        reencoded[how.split(" ")[0]] += 1
      writers[split].write(serialized, shard=record.position % shard_counts[split])
    progress.update(done - num_failed, processed=done, failed=num_failed)
  progress.update(len(work) - num_failed, processed=len(work), force=True, failed=num_failed)
  return reencoded


def _log_summary(
  summary: BuildSummary, plan: dataset_plan.DatasetPlan, reencoded: collections.Counter
) -> None:
  labels = {r.label for records in plan.splits.values() for r in records}
  empty_classes = summary.num_classes - len(labels)
  if empty_classes:
    logging.warning("%d of %d classes have no image found", empty_classes, summary.num_classes)
  if reencoded:
    logging.info("re-encoded as JPEG: %s", dict(reencoded))
  logging.info(
    "wrote %d train + %d validation records, %d failures (%s), %.1fs",
    summary.num_train,
    summary.num_validation,
    len(summary.failures),
    summary.failures_path,
    summary.seconds,
  )


def plan_build(config: DatasetBuildConfig) -> dataset_plan.DatasetPlan:
  """The plan of the build `config` describes (dataset_plan.plan_dataset; no image is read).

  Raises:
    ValueError / FileNotFoundError: a missing folder field or bad CSV files
      (naming the field or the file).
  """
  config.check_complete()
  split = (config.validation_split_size, config.seed, config.min_images_per_class)
  if config.image_folder:
    return own_dataset.plan_image_folder(config.image_folder, *split)
  if config.labels_csv:
    return own_dataset.plan_labels_csv(
      config.labels_csv, config.images_dir, config.allow_outside_images_dir, *split
    )
  return dataset_plan.plan_dataset(
    config.train_directory, config.train_csv_path, config.train_clean_csv_path, *split
  )


def build_dataset(config: DatasetBuildConfig) -> BuildSummary:
  """Writes train/validation TFRecords (see the module docstring and dataset_plan's).

  Args:
    config: what to build; all of its fields are used (num_workers: 1 writes
      in-process).

  Returns:
    A BuildSummary.

  Raises:
    ValueError / FileNotFoundError: on a missing folder field or bad CSV
      files (naming the field or the file); bad images never raise.
  """
  start = time.monotonic()
  shard_counts = config.shard_counts()
  plan = plan_build(config)
  output_directory = config.output_directory
  summary = start_summary(plan, output_directory)
  summary.failures = list(plan.missing)

  writers = {
    split: gldv2.ShardedRecordWriter(os.path.join(output_directory, split), shard_counts[split])
    for split in plan.splits
  }
  try:
    reencoded = _write_records(
      plan, writers, shard_counts, summary, config.num_workers, config.log_interval
    )
  except BaseException:
    for writer in writers.values():
      writer.abort()
    raise
  summary.train_files = writers[TRAIN_PREFIX].close()
  summary.num_train = writers[TRAIN_PREFIX].num_written
  if VALIDATION_PREFIX in writers:
    summary.validation_files = writers[VALIDATION_PREFIX].close()
    summary.num_validation = writers[VALIDATION_PREFIX].num_written

  summary.failures_path = os.path.join(output_directory, FAILURES_FILENAME)
  write_failures(summary.failures_path, summary.failures)
  split_lists.write_split_lists(output_directory, plan, summary.failures)
  summary.seconds = time.monotonic() - start
  _log_summary(summary, plan, reencoded)
  return summary
