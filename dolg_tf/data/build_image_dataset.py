r"""Converts Google Landmarks v2 training images to TFRecords (DELF layout).

  python -m dolg_tf.data.build_image_dataset \
      --train_csv_path=gldv2/train.csv \
      --train_clean_csv_path=gldv2/train_clean.csv \
      --train_directory=gldv2/train \
      --output_directory=gldv2/tfrecords \
      --num_shards=128 --validation_split_size=0.2 --seed=0

Inputs:
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
    `relabeling.csv` (landmark_id,label).
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
`failures.csv`. Every file appears atomically (temporary name, then rename).
"""

import collections
import csv
import dataclasses
import io
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Sequence

import numpy as np
from absl import app, flags, logging

from dolg_tf.data import image_codec
from dolg_tf.utils import cli, untrusted
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import progress as progress_lib

TRAIN_PREFIX = "train"
VALIDATION_PREFIX = "validation"
RELABELING_FILENAME = "relabeling.csv"
FAILURES_FILENAME = "failures.csv"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(frozen=True)
class ImageEntry:
  """One image of the CSV: id, original landmark id and (once found) its file."""

  image_id: str
  landmark_id: int
  path: str | None = None


@dataclasses.dataclass(frozen=True)
class Failure:
  image_id: str
  path: str
  reason: str


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
    relabeling_path: the landmark_id,label CSV.
    failures_path: the id,path,reason CSV.
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
  seconds: float = 0.0


def _open_csv(path: str, required: Sequence[str]) -> tuple[csv.DictReader, io.BufferedReader]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: CSV file not found")
  f = open(path, "rb")  # closed by the caller
  # UTF-8 (a leading BOM dropped); a byte that is not is one error naming file, line, offset.
  reader = csv.DictReader(untrusted.utf8_lines(f, path))
  try:
    fieldnames = reader.fieldnames
  except ValueError:
    f.close()
    raise
  missing = [c for c in required if c not in (fieldnames or [])]
  if missing:
    f.close()
    raise ValueError(
      f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})"
    )
  return reader, f


def _landmark(value: str, path: str, line: int) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{path}:{line}: landmark_id '{value}' is not an integer") from None


def read_train_csv(path: str) -> list[ImageEntry]:
  """Reads GLDv2 train.csv (id,url,landmark_id); duplicate ids keep the first row.

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: naming the file (and line), on a missing column, an empty id
      or a non-integer landmark id.
  """
  reader, f = _open_csv(path, ("id", "landmark_id"))
  entries, seen, duplicates = [], set(), 0
  with f:
    for row in untrusted.csv_rows(reader, path):
      line = reader.line_num
      image_id = (row["id"] or "").strip()
      if not image_id:
        raise ValueError(f"{path}:{line}: empty id")
      landmark = _landmark(row["landmark_id"], path, line)
      if image_id in seen:
        duplicates += 1
        continue
      seen.add(image_id)
      entries.append(ImageEntry(image_id, landmark))
  if duplicates:
    logging.warning("%s: %d duplicate image ids ignored", path, duplicates)
  return entries


def read_train_clean_csv(path: str) -> list[ImageEntry]:
  """Reads GLDv2 train_clean.csv (landmark_id, space-separated `images`).

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: naming the file (and line), on a missing column or a
      non-integer landmark id.
  """
  reader, f = _open_csv(path, ("landmark_id", "images"))
  entries, seen, duplicates = [], set(), 0
  with f:
    for row in untrusted.csv_rows(reader, path):
      landmark = _landmark(row["landmark_id"], path, reader.line_num)
      for image_id in (row["images"] or "").split():
        if image_id in seen:
          duplicates += 1
          continue
        seen.add(image_id)
        entries.append(ImageEntry(image_id, landmark))
  if duplicates:
    logging.warning("%s: %d duplicate image ids ignored", path, duplicates)
  return entries


def id_problem(image_id: str) -> str:
  """Why an id cannot name a file in the image folder ('/', '\\' or '..' in it), or ''.

  GLDv2 ids are hex digits; such an id would lead elsewhere, so it is never
  looked up.
  """
  if "/" in image_id or "\\" in image_id or ".." in image_id:
    return (
      f"id {image_id!r} contains '/', '\\' or '..': ids are file names in the image folder "
      "(hex digits in GLDv2); not read"
    )
  return ""


def candidate_paths(train_directory: str, image_id: str) -> list[str]:
  """Where an image may be: GLDv2 nested layout first, then flat, per extension."""
  paths = []
  for ext in IMAGE_EXTENSIONS:
    if len(image_id) >= 3:
      paths.append(
        os.path.join(train_directory, image_id[0], image_id[1], image_id[2], image_id + ext)
      )
    paths.append(os.path.join(train_directory, image_id + ext))
  return paths


def find_image(train_directory: str, image_id: str) -> str | None:
  """The first existing candidate path of `image_id`, or None (always for an `id_problem`)."""
  if id_problem(image_id):
    return None
  for path in candidate_paths(train_directory, image_id):
    if os.path.isfile(path):
      return path
  return None


def relabel(landmark_ids: Iterable[int]) -> dict[int, int]:
  """Maps the distinct landmark ids, in ascending order, to 0..C-1."""
  return {landmark: label for label, landmark in enumerate(sorted(set(landmark_ids)))}


def split_train_validation(
  labels: Sequence[int], validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Stratified random split of items by class.

  The validation set gets round(validation_fraction * N) items (fewer only
  when classes are too small: every class keeps at least one training item).
  Each class gets floor(fraction * n_c) validation items; the remaining ones
  go to the classes with the largest remainders, ties broken at random.

  Args:
    labels: class of each item.
    validation_fraction: in [0, 1).
    seed: random seed; the same seed gives the same split.

  Returns:
    (train indices, validation indices), both sorted int64 arrays.

  Raises:
    ValueError: if the fraction is outside [0, 1).
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_split_size must be in [0, 1), got {validation_fraction}")
  labels = np.asarray(labels, dtype=np.int64)
  n = labels.size
  rng = np.random.default_rng(seed)
  if n == 0 or validation_fraction == 0.0:
    return np.arange(n, dtype=np.int64), np.zeros([0], np.int64)
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  target = int(round(validation_fraction * n))
  exact = counts * validation_fraction
  quota = np.minimum(np.floor(exact).astype(np.int64), counts - 1)
  capacity = counts - 1 - quota
  remainder = exact - np.floor(exact)
  # Largest remainder first, random tie-break, only classes with spare capacity.
  order = np.lexsort((rng.random(classes.size), -remainder))
  missing = target - int(quota.sum())
  for c in order:
    if missing <= 0:
      break
    if capacity[c] > 0:
      quota[c] += 1
      missing -= 1
  validation = []
  for c in range(classes.size):
    members = np.flatnonzero(inverse == c)
    if quota[c]:
      validation.append(rng.choice(members, size=int(quota[c]), replace=False))
  validation = np.sort(np.concatenate(validation)) if validation else np.zeros([0], np.int64)
  mask = np.ones(n, bool)
  mask[validation] = False
  return np.flatnonzero(mask).astype(np.int64), validation.astype(np.int64)


def _write_csv(path: str, rows: Iterable[Sequence], header: Sequence[str]) -> None:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  file_utils.atomic_write_text(path, buffer.getvalue())


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


@dataclasses.dataclass(frozen=True)
class PlannedRecord:
  """One image to convert: its file and label; `position` is its place in its split."""

  image_id: str
  path: str
  label: int
  position: int


@dataclasses.dataclass
class DatasetPlan:
  """What to write, decided before any image is read (`plan_dataset`).

  Attributes:
    num_listed: images listed in the CSV.
    mapping: landmark id -> label.
    missing: images of the CSV whose file was not found.
    splits: split name -> its records in write order (train first; validation
      only if non-empty).
  """

  num_listed: int
  mapping: dict[int, int]
  missing: list[Failure]
  splits: dict[str, list[PlannedRecord]]

  def shard_records(self, split: str, shard: int, num_shards: int) -> list[PlannedRecord]:
    """The records of one shard, in order: record k of a split goes to shard k % num_shards.

    The shard of a record depends only on the plan (not on which images fail
    to convert), so any worker writes any shard alone, byte for byte as
    `build_dataset` does.
    """
    return self.splits[split][shard::num_shards]


def plan_dataset(
  train_directory: str,
  train_csv_path: str | None = None,
  train_clean_csv_path: str | None = None,
  validation_split_size: float = 0.2,
  seed: int = 0,
) -> DatasetPlan:
  """Reads the CSV, relabels, locates the files and splits them (see the module docstring).

  Raises:
    ValueError / FileNotFoundError: on bad arguments or CSV files (naming the file).
  """
  if not train_csv_path and not train_clean_csv_path:
    raise ValueError("give train_csv_path and/or train_clean_csv_path")
  if not os.path.isdir(train_directory):
    raise FileNotFoundError(f"{train_directory}: train directory not found")
  if not 0.0 <= validation_split_size < 1.0:
    raise ValueError(f"validation_split_size must be in [0, 1), got {validation_split_size}")
  if train_clean_csv_path:
    entries = read_train_clean_csv(train_clean_csv_path)
    source = train_clean_csv_path
    if train_csv_path:
      full = {e.image_id: e.landmark_id for e in read_train_csv(train_csv_path)}
      absent = sum(1 for e in entries if e.image_id not in full)
      disagree = sum(1 for e in entries if full.get(e.image_id, e.landmark_id) != e.landmark_id)
      if absent or disagree:
        logging.warning(
          "%s vs %s: %d ids absent from train.csv, %d with another landmark_id",
          train_clean_csv_path,
          train_csv_path,
          absent,
          disagree,
        )
  else:
    entries = read_train_csv(train_csv_path)
    source = train_csv_path
  mapping = relabel(e.landmark_id for e in entries)
  logging.info("%s: %d images of %d landmarks", source, len(entries), len(mapping))

  found, missing = [], []
  for i, entry in enumerate(entries):
    problem = id_problem(entry.image_id)
    path = None if problem else find_image(train_directory, entry.image_id)
    if problem:
      flat = os.path.join(train_directory, entry.image_id + IMAGE_EXTENSIONS[0])
      missing.append(Failure(entry.image_id, flat, problem))
      logging.warning("%s", problem)
    elif path is None:
      expected = candidate_paths(train_directory, entry.image_id)[0]
      reason = f"{expected}: file not found (nor <id>.jpg/.jpeg/.png in {train_directory})"
      missing.append(Failure(entry.image_id, expected, reason))
      logging.warning("%s", reason)
    else:
      found.append(dataclasses.replace(entry, path=path))
    if (i + 1) % 100_000 == 0:
      logging.info("located %d/%d images", i + 1, len(entries))
  logging.info("%d of %d images found", len(found), len(entries))

  # Split, then shuffle the records of each split.
  labels = [mapping[e.landmark_id] for e in found]
  train_idx, val_idx = split_train_validation(labels, validation_split_size, seed)
  rng = np.random.default_rng([seed, 1])
  splits = {TRAIN_PREFIX: rng.permutation(train_idx)}
  validation = rng.permutation(val_idx)
  if len(validation):
    splits[VALIDATION_PREFIX] = validation
  logging.info("split: %d train, %d validation", len(train_idx), len(val_idx))
  return DatasetPlan(
    num_listed=len(entries),
    mapping=mapping,
    missing=missing,
    splits={
      name: [
        PlannedRecord(found[i].image_id, found[i].path, labels[i], k) for k, i in enumerate(indices)
      ]
      for name, indices in splits.items()
    },
  )


def convert(record: PlannedRecord, prepared_task) -> tuple[bytes | None, Failure | None, str]:
  """(serialized Example, None, re-encoding) of a converted image, or (None, Failure, "").

  Args:
    record: the planned record.
    prepared_task: image_codec.prepare_task's (id, PreparedImage or None, reason).
  """
  # Imported here so that `--help` and CSV errors do not wait for TensorFlow.
  from dolg_tf.data import gldv2  # pylint: disable=g-import-not-at-top

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


def write_relabeling(path: str, mapping: dict[int, int]) -> None:
  """`relabeling.csv` (landmark_id,label), atomically."""
  _write_csv(path, sorted(mapping.items()), ("landmark_id", "label"))


def write_failures(path: str, failures: Iterable[Failure]) -> None:
  """`failures.csv` (id,path,reason), atomically."""
  _write_csv(path, [(f.image_id, f.path, f.reason) for f in failures], ("id", "path", "reason"))


def build_dataset(
  output_directory: str,
  train_directory: str,
  train_csv_path: str | None = None,
  train_clean_csv_path: str | None = None,
  num_shards: int = 128,
  num_validation_shards: int | None = None,
  validation_split_size: float = 0.2,
  seed: int = 0,
  num_workers: int = 1,
  log_interval: float = 30.0,
) -> BuildSummary:
  """Writes GLDv2 train/validation TFRecords (see the module docstring).

  Args:
    output_directory: folder for the outputs (created if needed).
    train_directory: folder of the images.
    train_csv_path: train.csv (id,url,landmark_id).
    train_clean_csv_path: train_clean.csv (landmark_id,images); selects the
      images when given.
    num_shards: number of training shards.
    num_validation_shards: number of validation shards (None: num_shards).
    validation_split_size: fraction of the found images used for validation.
    seed: random seed of the split and of the record order.
    num_workers: processes that read and re-encode images (1: in-process).
    log_interval: seconds between progress logs.

  Returns:
    A BuildSummary.

  Raises:
    ValueError / FileNotFoundError: on bad arguments or CSV files (naming the
      file); bad images never raise.
  """
  start = time.monotonic()
  from dolg_tf.data import gldv2  # pylint: disable=g-import-not-at-top

  shard_counts = check_shard_counts(num_shards, num_validation_shards)
  plan = plan_dataset(
    train_directory, train_csv_path, train_clean_csv_path, validation_split_size, seed
  )
  summary = BuildSummary(num_listed=plan.num_listed, num_classes=len(plan.mapping))
  summary.failures = list(plan.missing)
  summary.planned_validation_ids = sorted(
    r.image_id for r in plan.splits.get(VALIDATION_PREFIX, [])
  )
  os.makedirs(output_directory, exist_ok=True)
  summary.relabeling_path = os.path.join(output_directory, RELABELING_FILENAME)
  write_relabeling(summary.relabeling_path, plan.mapping)

  writers = {
    split: gldv2.ShardedRecordWriter(os.path.join(output_directory, split), shard_counts[split])
    for split in plan.splits
  }
  work = [(split, record) for split, records in plan.splits.items() for record in records]
  progress = progress_lib.Progress(len(work), "converted", "img", log_interval)
  reencoded = collections.Counter()
  num_failed = 0
  try:
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
  labels = {r.label for records in plan.splits.values() for r in records}
  empty_classes = summary.num_classes - len(labels)
  if empty_classes:
    logging.warning("%d of %d classes have no image found", empty_classes, summary.num_classes)
  if reencoded:
    logging.info("re-encoded as JPEG: %s", dict(reencoded))
  summary.seconds = time.monotonic() - start
  logging.info(
    "wrote %d train + %d validation records, %d failures (%s), %.1fs",
    summary.num_train,
    summary.num_validation,
    len(summary.failures),
    summary.failures_path,
    summary.seconds,
  )
  return summary


def check_shard_counts(num_shards: int, num_validation_shards: int | None) -> dict[str, int]:
  """{split: number of shards}; num_validation_shards None means num_shards.

  Raises:
    ValueError: a count < 1.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  if num_validation_shards is not None and num_validation_shards < 1:
    raise ValueError(f"num_validation_shards must be >= 1, got {num_validation_shards}")
  return {TRAIN_PREFIX: num_shards, VALIDATION_PREFIX: num_validation_shards or num_shards}


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS, local: bool = True) -> None:
  """Defines the binary's flags (only when run as a program, or in tests).

  Args:
    flag_values: where.
    local: also --num_workers and --log_interval (one machine; the Beam
      command's workers are the runner's).
  """
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("train_csv_path", None, "GLDv2 train.csv (id,url,landmark_id).", **fv)
  flags.DEFINE_string(
    "train_clean_csv_path",
    None,
    "GLDv2 train_clean.csv (landmark_id,images); selects the images when given.",
    **fv,
  )
  flags.DEFINE_string("train_directory", None, "Folder of the training images.", **fv)
  flags.DEFINE_string("output_directory", None, "Folder for the TFRecords and CSVs.", **fv)
  flags.DEFINE_integer("num_shards", 128, "Number of training shards.", **fv)
  flags.DEFINE_integer(
    "num_validation_shards", 0, "Number of validation shards (0: num_shards).", **fv
  )
  flags.DEFINE_float(
    "validation_split_size", 0.2, "Fraction of images for validation, in [0, 1).", **fv
  )
  flags.DEFINE_integer("seed", 0, "Seed of the split and of the record order.", **fv)
  if not local:
    return
  flags.DEFINE_integer(
    "num_workers", os.cpu_count() or 1, "Processes that decode and re-encode images.", **fv
  )
  flags.DEFINE_float("log_interval", 30.0, "Seconds between progress logs.", **fv)


def run_with_flags(flag_values: flags.FlagValues) -> int:
  """Runs the conversion the (parsed) flags describe; returns the exit status.

  Returns:
    0 on success (bad images are listed in failures.csv), 2 on a bad flag or
    CSV file (reported as one line on stderr).
  """
  fv = flag_values
  try:
    if not fv.train_directory or not fv.output_directory:
      raise ValueError("--train_directory and --output_directory are required")
    summary = build_dataset(
      output_directory=fv.output_directory,
      train_directory=fv.train_directory,
      train_csv_path=fv.train_csv_path,
      train_clean_csv_path=fv.train_clean_csv_path,
      num_shards=fv.num_shards,
      num_validation_shards=fv.num_validation_shards or None,
      validation_split_size=fv.validation_split_size,
      seed=fv.seed,
      num_workers=fv.num_workers,
      log_interval=fv.log_interval,
    )
  except (OSError, ValueError) as e:
    print(f"build_image_dataset: error: {e}", file=sys.stderr)
    return 2
  print(
    f"{summary.num_train} train + {summary.num_validation} validation records of "
    f"{summary.num_classes} classes, {len(summary.failures)} failures -> {fv.output_directory}"
  )
  return 0


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
