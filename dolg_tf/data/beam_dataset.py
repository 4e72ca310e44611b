"""The dataset builder on Apache Beam: the same shards as dataset_writer, many workers.

    summary, counters = beam_dataset.run_pipeline(
        dataset_config.DatasetBuildConfig(
            output_directory="/abs/tfrecords", train_directory="/abs/train",
            train_clean_csv_path="/abs/train_clean.csv", num_shards=128),
        options=beam_cli.pipeline_options(argv))

The command is beam_build_dataset.py.

  1. Plan, on the launcher (no image is read): dataset_plan.plan_dataset
     reads the CSV, relabels, locates the files and splits them, exactly as
     the single-process builder; `relabeling.csv` is written. Each shard's
     records (record k of a split is in shard k % num_shards) go to a plan
     file `.beam_build/<shard>.tsv`.
  2. `beam.Create(shard names)` -> `Reshuffle` -> WriteShardDoFn: a worker
     reads its shard's plan, converts the images (image_codec, the same
     re-encoding rules) and writes the TFRecord file under a temporary name,
     renamed when complete; then `.beam_build/<shard>.done.json` records the
     shard's plan digest, record count and failures. A shard whose file and
     done record exist for the same plan is skipped, so a rerun after a kill
     redoes only the missing shards, and a retried bundle rewrites the same
     bytes atomically. Counters (namespace "dolg_dataset"): records_written,
     images_failed, shards_written, shards_skipped.
  3. After the pipeline, the launcher writes `failures.csv` from the plan's
     missing files and the done records, in the single-process order.

A shard that cannot be written because of the folder (disk full, quota,
read-only, permission) is counted (`unwritten_<errno>`) instead of failing the
pipeline, and the launcher raises one OSError naming the folder and the shards
left for the next run. An interrupted launcher (Ctrl-C, SIGTERM) stops its
local workers and removes their temporary files before it exits.

The output folder is then byte for byte what dataset_writer writes for
the same config (plus the hidden `.beam_build/`, which a rerun needs). Files
are read and written with local file APIs: on a cluster the images and the
output folder must be on a file system every worker mounts.
"""

import csv
import errno
import io
import json
import os
import time

import apache_beam as beam
import tensorflow as tf
from absl import logging
from apache_beam.metrics import Metrics

from dolg_tf.data import dataset_plan, dataset_writer, gldv2, image_codec, split_lists
from dolg_tf.data.dataset_config import DatasetBuildConfig
from dolg_tf.data.dataset_plan import TRAIN_PREFIX, VALIDATION_PREFIX
from dolg_tf.utils import beam_cli
from dolg_tf.utils import files as file_utils

COUNTER_NAMESPACE = "dolg_dataset"
WORK_DIR = ".beam_build"
COUNTER_NAMES = ("records_written", "images_failed", "shards_written", "shards_skipped")
# Shards not written because the output folder refused them: `unwritten_<errno>`.
UNWRITTEN_PREFIX = "unwritten_"
FOLDER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def folder_errno(error: BaseException | None) -> int | None:
  """The errno of a write error about the whole folder (TF's file errors included), else None.

  The error's causes are looked at too.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in FOLDER_ERRNOS:
      return error.errno
    if isinstance(error, tf.errors.ResourceExhaustedError):
      return errno.ENOSPC
    if isinstance(error, tf.errors.PermissionDeniedError):
      return errno.EACCES
    if isinstance(error, tf.errors.OpError) and "Read-only file system" in str(error):
      return errno.EROFS
    error = error.__cause__ or error.__context__
  return None


def read_plan(text: str) -> list[dataset_plan.PlannedRecord]:
  """The records of a plan file's text."""
  rows = csv.reader(io.StringIO(text), delimiter="\t")
  return [dataset_plan.PlannedRecord(i, path, int(label), int(k)) for k, i, label, path in rows]


def _read_text(path: str) -> str | None:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except FileNotFoundError:
    return None


def _done_path(output_directory: str, shard_name: str) -> str:
  return os.path.join(output_directory, WORK_DIR, shard_name + ".done.json")


def read_done(output_directory: str, shard_name: str, plan_digest: str) -> dict | None:
  """The done record of a shard written from this plan, or None (absent, stale or unreadable)."""
  try:
    with open(_done_path(output_directory, shard_name), encoding="utf-8") as f:
      done = json.load(f)
  except (OSError, ValueError):
    return None
  if done.get("plan") != plan_digest:
    return None
  if not os.path.exists(os.path.join(output_directory, shard_name)):
    return None
  return done


class WriteShardDoFn(beam.DoFn):
  """Shard name in; the shard's TFRecord file and done record out (failures as rows)."""

  def __init__(self, output_directory: str):
    self._output_directory = output_directory
    self._counters = {name: Metrics.counter(COUNTER_NAMESPACE, name) for name in COUNTER_NAMES}

  def process(self, shard_name: str):
    out = self._output_directory
    text = _read_text(os.path.join(out, WORK_DIR, shard_name + ".tsv"))
    plan_digest = dataset_plan.text_digest(text)
    done = read_done(out, shard_name, plan_digest)
    if done is None:
      try:
        done = self._write(shard_name, read_plan(text), plan_digest)
      except (OSError, tf.errors.OpError) as e:
        code = folder_errno(e)
        if code is None:
          raise
        Metrics.counter(COUNTER_NAMESPACE, f"{UNWRITTEN_PREFIX}{code}").inc()
        return
    else:
      self._counters["shards_skipped"].inc()
    yield from done["failures"]

  def _write(self, shard_name: str, records, plan_digest: str) -> dict:
    final = os.path.join(self._output_directory, shard_name)
    tmp = file_utils.temp_path(final)
    failures, written = [], 0
    try:
      with tf.io.TFRecordWriter(tmp) as writer:
        for record in records:
          prepared = image_codec.prepare_task((record.image_id, record.path))
          serialized, failure, _ = dataset_writer.convert(record, prepared)
          if failure:
            failures.append([record.position, failure.image_id, failure.path, failure.reason])
          else:
            writer.write(serialized)
            written += 1
      os.replace(tmp, final)
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise
    done = {"plan": plan_digest, "records": written, "failures": failures}
    file_utils.atomic_write_text(_done_path(self._output_directory, shard_name), json.dumps(done))
    self._counters["records_written"].inc(written)
    self._counters["images_failed"].inc(len(failures))
    self._counters["shards_written"].inc()
    return done


def _write_shard_plans(
  plan: dataset_plan.DatasetPlan, shard_counts: dict[str, int], output_directory: str
) -> dict[str, list[tuple[str, str]]]:
  """Writes each shard's plan file (unless unchanged); returns split -> [(shard name, digest)]."""
  work_dir = os.path.join(output_directory, WORK_DIR)
  shards = {}
  for split in plan.splits:
    count = shard_counts[split]
    shards[split] = []
    for shard in range(count):
      name = os.path.basename(gldv2.shard_path(split, shard, count))
      text = dataset_plan.shard_plan_text(plan.shard_records(split, shard, count))
      path = os.path.join(work_dir, name + ".tsv")
      if _read_text(path) != text:
        file_utils.atomic_write_text(path, text)
      shards[split].append((name, dataset_plan.text_digest(text)))
  return shards


def _run_shard_pipeline(names: list[str], output_directory: str, options) -> dict[str, int]:
  """Runs WriteShardDoFn over the shards; returns the counters.

  Raises:
    OSError: naming the folder, if it refused shards (disk full, read-only, ...).
  """
  root = beam.Pipeline(options=options or beam_cli.pipeline_options(["beam_dataset"]))
  _ = (
    root
    | "Shards" >> beam.Create(names, reshuffle=False)
    | "Spread" >> beam.Reshuffle()
    | "Write" >> beam.ParDo(WriteShardDoFn(output_directory))
  )
  result = beam_cli.run_to_the_end(root, output_directory)
  counters = beam_cli.counters(result, COUNTER_NAMESPACE, COUNTER_NAMES)
  unwritten = {
    int(name[len(UNWRITTEN_PREFIX) :]): count
    for name, count in counters.items()
    if name.startswith(UNWRITTEN_PREFIX) and count
  }
  if unwritten:
    file_utils.remove_stale_temp_files(output_directory)
    reason = ", ".join(sorted({os.strerror(code) for code in unwritten}))
    raise OSError(
      f"{output_directory}: dataset stopped ({reason}): this run wrote "
      f"{counters['shards_written']} shards, left {sum(unwritten.values())} not written "
      "(the next run writes them)"
    )
  return counters


def _collect_shards(
  output_directory: str,
  shards: dict[str, list[tuple[str, str]]],
  plan: dataset_plan.DatasetPlan,
  summary: dataset_writer.BuildSummary,
) -> None:
  """Fills `summary` from the done records; writes `failures.csv` in the single-process order."""
  conversion_failures, records, files = [], {}, {}
  for split_rank, (split, entries) in enumerate(shards.items()):
    records[split], files[split] = 0, []
    for name, plan_digest in entries:
      done = read_done(output_directory, name, plan_digest)
      if done is None:
        raise RuntimeError(f"{os.path.join(output_directory, name)}: not written by the pipeline")
      files[split].append(os.path.join(output_directory, name))
      records[split] += done["records"]
      conversion_failures += [(split_rank, row) for row in done["failures"]]
  summary.num_train = records[TRAIN_PREFIX]
  summary.train_files = files[TRAIN_PREFIX]
  summary.num_validation = records.get(VALIDATION_PREFIX, 0)
  summary.validation_files = files.get(VALIDATION_PREFIX, [])
  conversion_failures.sort(key=lambda item: (item[0], item[1][0]))
  summary.failures = list(plan.missing) + [
    dataset_plan.Failure(*row[1:]) for _, row in conversion_failures
  ]
  summary.failures_path = os.path.join(output_directory, dataset_writer.FAILURES_FILENAME)
  dataset_writer.write_failures(summary.failures_path, summary.failures)
  split_lists.write_split_lists(output_directory, plan, summary.failures)


def run_pipeline(
  config: DatasetBuildConfig, options=None
) -> tuple[dataset_writer.BuildSummary, dict[str, int]]:
  """Plans, runs and waits for the dataset pipeline (module doc).

  Args:
    config: what to build, as for dataset_writer.build_dataset (num_workers
      and log_interval are not used: the workers are the runner's). Its paths
      must mean the same on every worker (absolute on a shared file system).
    options: Beam's PipelineOptions (default: the DirectRunner).

  Returns:
    (summary, counters): the summary covers the whole output folder (shards
    of earlier runs included), the counters this run.

  Raises:
    ValueError / FileNotFoundError: on a missing folder field or bad CSV
      files (naming the field or the file).
  """
  start = time.monotonic()
  shard_counts = config.shard_counts()
  plan = dataset_writer.plan_build(config)
  output_directory = config.output_directory
  os.makedirs(os.path.join(output_directory, WORK_DIR), exist_ok=True)
  for path in file_utils.remove_stale_temp_files(output_directory):
    logging.info("removed a temporary file of an interrupted run: %s", path)
  summary = dataset_writer.start_summary(plan, output_directory)
  shards = _write_shard_plans(plan, shard_counts, output_directory)
  names = [name for entries in shards.values() for name, _ in entries]
  logging.info("%d shards -> %s", len(names), output_directory)
  counters = _run_shard_pipeline(names, output_directory, options)
  _collect_shards(output_directory, shards, plan, summary)
  summary.seconds = time.monotonic() - start
  return summary, {name: counters[name] for name in COUNTER_NAMES}
