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

Resumable: shards are written one after the other, each from its planned
records (record k of a split is in shard k % num_shards, dataset_plan) to a
temporary file renamed when complete, then `.build/<shard>.done.json` records
the digest of its plan, its record count and its failures. A rerun after an
interruption (Ctrl-C, a kill, a crash) keeps every shard whose file and done
record exist for the same plan, removes the killed run's temporary files and
writes only the other shards: the folder ends byte for byte as an
uninterrupted build writes it. A changed plan (other images, seed, split or
shard counts) rewrites the shards it changes. The images themselves are
assumed unchanged between the runs. Once everything is written, `.build/` is
removed: a rerun of a finished build writes it all again.
"""

import collections
import csv
import dataclasses
import io
import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence

import tensorflow as tf
from absl import logging

from dolg_tf.data import dataset_plan, gldv2, image_codec, own_dataset, split_lists
from dolg_tf.data.dataset_config import DatasetBuildConfig
from dolg_tf.data.dataset_plan import TRAIN_PREFIX, VALIDATION_PREFIX, Failure, PlannedRecord
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import progress as progress_lib

RELABELING_FILENAME = "relabeling.csv"
FAILURES_FILENAME = "failures.csv"
DROPPED_FILENAME = "dropped_classes.csv"
# Hidden folder of the done records (`<shard>.done.json`) that make a rerun resume.
WORK_DIR = ".build"


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


@dataclasses.dataclass
class ShardJob:
  """One shard of a build: its file, its planned records, and its done record once written."""

  split: str
  path: str
  records: list[PlannedRecord]
  digest: str
  done: dict | None = None


def done_path(shard_path: str) -> str:
  """`<folder>/.build/<shard name>.done.json`: the record of a finished shard."""
  folder, name = os.path.split(shard_path)
  return os.path.join(folder, WORK_DIR, name + ".done.json")


def read_done(shard_path: str, digest: str) -> dict | None:
  """The done record of a shard written from the plan `digest`, or None (absent, stale, unreadable).

  None too when the shard file itself is gone.
  """
  try:
    with open(done_path(shard_path), encoding="utf-8") as f:
      done = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(done, dict) or done.get("plan") != digest:
    return None
  return done if os.path.isfile(shard_path) else None


def shard_jobs(
  plan: dataset_plan.DatasetPlan, shard_counts: dict[str, int], output_directory: str
) -> list[ShardJob]:
  """Every shard of `plan` in write order, each with its done record if a run finished it."""
  jobs = []
  for split in plan.splits:
    count = shard_counts[split]
    for shard in range(count):
      records = plan.shard_records(split, shard, count)
      path = gldv2.shard_path(os.path.join(output_directory, split), shard, count)
      digest = dataset_plan.shard_digest(records)
      jobs.append(ShardJob(split, path, records, digest, read_done(path, digest)))
  return jobs


def _write_shard(job: ShardJob, stream, progress: progress_lib.Progress) -> dict:
  """Converts the shard's images (from `stream`, in order) into its file; returns its done record.

  The file appears complete (temporary name, then rename), then its done record.
  """
  failures, written, reencoded = [], 0, collections.Counter()
  tmp = file_utils.temp_path(job.path)
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      for record in job.records:
        serialized, failure, how = convert(record, next(stream))
        if failure:
          failures.append([record.position, failure.image_id, failure.path, failure.reason])
        else:
          writer.write(serialized)
          written += 1
          if how:
            reencoded[how.split(" ")[0]] += 1
        failed = progress.counters.get("failed", 0) + (failure is not None)
        progress.update(
          progress.done + (failure is None), processed=progress.processed + 1, failed=failed
        )
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())  # on disk before its done record says so
    os.replace(tmp, job.path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  done = {"plan": job.digest, "records": written, "failures": failures, "reencoded": reencoded}
  file_utils.atomic_write_text(done_path(job.path), json.dumps(done))
  return done


def _write_shards(jobs: list[ShardJob], num_workers: int, log_interval: float) -> None:
  """Writes every job without a done record (fills in `done`); the others are kept as they are."""
  todo = [job for job in jobs if job.done is None]
  if len(todo) < len(jobs):
    logging.info(
      "%d of %d shards were finished by an earlier run (kept); writing %d",
      len(jobs) - len(todo),
      len(jobs),
      len(todo),
    )
  tasks = [(r.image_id, r.path) for job in todo for r in job.records]
  progress = progress_lib.Progress(len(tasks), "converted", "img", log_interval)
  stream = _prepared_stream(tasks, num_workers)
  try:
    for job in todo:
      job.done = _write_shard(job, stream, progress)
  finally:
    stream.close()  # stops the worker processes
  progress.update(
    progress.done, processed=len(tasks), force=True, failed=progress.counters.get("failed", 0)
  )


def _collect(jobs: list[ShardJob], summary: BuildSummary) -> collections.Counter:
  """Fills `summary`'s files, counts and conversion failures (in split, then record order)."""
  failures, reencoded = [], collections.Counter()
  ranks = {split: rank for rank, split in enumerate(dict.fromkeys(job.split for job in jobs))}
  for job in jobs:
    if job.split == TRAIN_PREFIX:
      summary.train_files.append(job.path)
      summary.num_train += job.done["records"]
    else:
      summary.validation_files.append(job.path)
      summary.num_validation += job.done["records"]
    failures += [(ranks[job.split], row) for row in job.done["failures"]]
    reencoded.update(job.done.get("reencoded", {}))
  failures.sort(key=lambda item: (item[0], item[1][0]))
  summary.failures += [Failure(*row[1:]) for _, row in failures]
  return reencoded


def _remove_done_records(jobs: list[ShardJob], output_directory: str) -> None:
  """Removes the done records and `.build/` once the whole folder is written (best effort)."""
  for job in jobs:
    try:
      os.unlink(done_path(job.path))
    except FileNotFoundError:
      pass
  try:
    os.rmdir(os.path.join(output_directory, WORK_DIR))
  except OSError as e:
    logging.warning("%s: not removed (%s)", os.path.join(output_directory, WORK_DIR), e)


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

  work_dir = os.path.join(output_directory, WORK_DIR)
  os.makedirs(work_dir, exist_ok=True)
  for folder in (output_directory, work_dir):
    for path in file_utils.remove_stale_temp_files(folder):
      logging.info("removed a temporary file of an interrupted run: %s", path)
  jobs = shard_jobs(plan, shard_counts, output_directory)
  _write_shards(jobs, config.num_workers, config.log_interval)
  reencoded = _collect(jobs, summary)

  summary.failures_path = os.path.join(output_directory, FAILURES_FILENAME)
  write_failures(summary.failures_path, summary.failures)
  split_lists.write_split_lists(output_directory, plan, summary.failures)
  _remove_done_records(jobs, output_directory)
  summary.seconds = time.monotonic() - start
  _log_summary(summary, plan, reencoded)
  return summary
