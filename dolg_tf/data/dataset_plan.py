"""What a dataset build writes (GLDv2 CSVs or your own images), decided before any image is read.

`plan_dataset` reads GLDv2's CSV (gldv2_files; own_dataset lists a folder of
class folders or a path,label CSV and calls `plan_entries` the same way),
drops the classes under min_images_per_class, relabels the landmark ids to
contiguous labels 0..C-1 in ascending landmark id order (over every class of
the CSV), locates the image files and splits the found ones into train and
validation per image, stratified by class (`split_train_validation`). The
order of records within a split is random with the seed. Record k of a split
goes to shard k % num_shards (`DatasetPlan.shard_records`), so every shard is
determined by the inputs alone: dataset_writer writes them all in one process,
beam_dataset shard by shard on many machines, byte for byte the same.

No TensorFlow.
"""

import collections
import csv
import dataclasses
import hashlib
import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
from absl import logging

from dolg_tf.data import gldv2_files
from dolg_tf.data.gldv2_files import ImageEntry

TRAIN_PREFIX = "train"
VALIDATION_PREFIX = "validation"


@dataclasses.dataclass(frozen=True)
class Failure:
  """An image left out of the dataset, with its file and the reason."""

  image_id: str
  path: str
  reason: str


def relabel(landmark_ids: Iterable, key=None) -> dict:
  """Maps the distinct landmark ids (class names), in ascending order (of `key`), to 0..C-1."""
  return {landmark: label for label, landmark in enumerate(sorted(set(landmark_ids), key=key))}


def check_min_images(min_images_per_class: int) -> None:
  """Raises ValueError (naming min_images_per_class) unless it is >= 1."""
  if min_images_per_class < 1:
    raise ValueError(f"min_images_per_class must be >= 1, got {min_images_per_class}")


def check_fraction(validation_fraction: float) -> None:
  """Raises ValueError (naming validation_split_size) unless the fraction is in [0, 1)."""
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_split_size must be in [0, 1), got {validation_fraction}")


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
  check_fraction(validation_fraction)
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
    num_listed: images listed by the source.
    mapping: landmark id (GLDv2) or class name (own data) -> label.
    missing: images of the source whose file was not found or was refused.
    splits: split name -> its records in write order (train first; validation
      only if non-empty).
    dropped: classes left out (fewer listed images than
      min_images_per_class) -> their number of listed images.
    class_column: the first column of relabeling.csv: 'landmark_id' (GLDv2)
      or 'class' (own data).
  """

  num_listed: int
  mapping: dict
  missing: list[Failure]
  splits: dict[str, list[PlannedRecord]]
  dropped: dict = dataclasses.field(default_factory=dict)
  class_column: str = "landmark_id"

  def shard_records(self, split: str, shard: int, num_shards: int) -> list[PlannedRecord]:
    """The records of one shard, in order: record k of a split goes to shard k % num_shards.

    The shard of a record depends only on the plan (not on which images fail
    to convert), so any worker writes any shard alone, byte for byte as
    dataset_writer.build_dataset does.
    """
    return self.splits[split][shard::num_shards]


def shard_plan_text(records: Iterable[PlannedRecord]) -> str:
  """A shard's records as text: position, id, label, path per line (tab-separated)."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
  writer.writerows((r.position, r.image_id, r.label, r.path) for r in records)
  return buffer.getvalue()


def text_digest(text: str) -> str:
  """The SHA-256 (hex) of a plan text."""
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shard_digest(records: Iterable[PlannedRecord]) -> str:
  """The digest of `shard_plan_text(records)`: what a finished shard was written from."""
  return text_digest(shard_plan_text(records))


def read_entries(train_csv_path: str | None, train_clean_csv_path: str | None) -> list[ImageEntry]:
  """The images of train_clean.csv if given (train.csv then only cross-checked), else train.csv."""
  if not train_clean_csv_path:
    return gldv2_files.read_train_csv(train_csv_path)
  entries = gldv2_files.read_train_clean_csv(train_clean_csv_path)
  if train_csv_path:
    full = {e.image_id: e.landmark_id for e in gldv2_files.read_train_csv(train_csv_path)}
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
  return entries


def locate_images(
  train_directory: str, entries: Sequence[ImageEntry]
) -> tuple[list[ImageEntry], list[Failure]]:
  """(entries whose file was found, with their path; a Failure per image not found or refused)."""
  found, missing = [], []
  for i, entry in enumerate(entries):
    problem = gldv2_files.id_problem(entry.image_id)
    path = None if problem else gldv2_files.find_image(train_directory, entry.image_id)
    if problem:
      flat = os.path.join(train_directory, entry.image_id + gldv2_files.IMAGE_EXTENSIONS[0])
      missing.append(Failure(entry.image_id, flat, problem))
      logging.warning("%s", problem)
    elif path is None:
      expected = gldv2_files.candidate_paths(train_directory, entry.image_id)[0]
      reason = f"{expected}: file not found (nor <id>.jpg/.jpeg/.png in {train_directory})"
      missing.append(Failure(entry.image_id, expected, reason))
      logging.warning("%s", reason)
    else:
      found.append(dataclasses.replace(entry, path=path))
    if (i + 1) % 100_000 == 0:
      logging.info("located %d/%d images", i + 1, len(entries))
  logging.info("%d of %d images found", len(found), len(entries))
  return found, missing


def _split_records(
  found: Sequence[ImageEntry], labels: Sequence[int], validation_split_size: float, seed: int
) -> dict[str, list[PlannedRecord]]:
  """Splits, then shuffles the records of each split (validation only if non-empty)."""
  train_idx, val_idx = split_train_validation(labels, validation_split_size, seed)
  rng = np.random.default_rng([seed, 1])
  splits = {TRAIN_PREFIX: rng.permutation(train_idx)}
  validation = rng.permutation(val_idx)
  if len(validation):
    splits[VALIDATION_PREFIX] = validation
  logging.info("split: %d train, %d validation", len(train_idx), len(val_idx))
  return {
    name: [
      PlannedRecord(found[i].image_id, found[i].path, labels[i], k) for k, i in enumerate(indices)
    ]
    for name, indices in splits.items()
  }


def plan_entries(
  listed: dict,
  found: Sequence[ImageEntry],
  missing: list[Failure],
  validation_split_size: float,
  seed: int,
  min_images_per_class: int = 1,
  key=None,
  class_column: str = "landmark_id",
) -> DatasetPlan:
  """The plan of listed images: drops small classes, relabels the others, splits the found images.

  Args:
    listed: class -> number of images the source lists for it (found or not).
    found: the entries whose file was found, in a deterministic order.
    missing: the failures of listing (files not found or refused).
    validation_split_size: fraction of the found images for validation.
    seed: seed of the split and of the record order.
    min_images_per_class: classes with fewer listed images are dropped.
    key: sort key of the class names (None: natural order).
    class_column: DatasetPlan.class_column.
  """
  check_min_images(min_images_per_class)
  dropped = {c: n for c, n in listed.items() if n < min_images_per_class}
  mapping = relabel((c for c in listed if c not in dropped), key=key)
  if dropped:
    logging.warning(
      "%d classes with fewer than %d images dropped (%d images)",
      len(dropped),
      min_images_per_class,
      sum(dropped.values()),
    )
  kept = [e for e in found if e.landmark_id in mapping]
  labels = [mapping[e.landmark_id] for e in kept]
  counts = np.bincount(labels, minlength=len(mapping)) if labels else np.zeros([0])
  single = int(np.sum(counts == 1))
  if single and validation_split_size > 0:
    logging.info("%d classes with a single image found: it stays in train", single)
  return DatasetPlan(
    num_listed=sum(listed.values()),
    mapping=mapping,
    missing=missing,
    splits=_split_records(kept, labels, validation_split_size, seed),
    dropped={c: dropped[c] for c in sorted(dropped, key=key)},
    class_column=class_column,
  )


def plan_dataset(
  train_directory: str,
  train_csv_path: str | None = None,
  train_clean_csv_path: str | None = None,
  validation_split_size: float = 0.2,
  seed: int = 0,
  min_images_per_class: int = 1,
) -> DatasetPlan:
  """Reads the CSV, relabels, locates the files and splits them (see the module docstring).

  Classes with fewer CSV rows than min_images_per_class are dropped; with 1,
  every class of the CSV keeps its label, found or not (as DELF).

  Raises:
    ValueError / FileNotFoundError: on bad arguments or CSV files (naming the file).
  """
  if not train_csv_path and not train_clean_csv_path:
    raise ValueError("give train_csv_path and/or train_clean_csv_path")
  if not os.path.isdir(train_directory):
    raise FileNotFoundError(f"{train_directory}: train directory not found")
  check_fraction(validation_split_size)
  check_min_images(min_images_per_class)
  entries = read_entries(train_csv_path, train_clean_csv_path)
  listed = collections.Counter(e.landmark_id for e in entries)
  source = train_clean_csv_path or train_csv_path
  logging.info("%s: %d images of %d landmarks", source, len(entries), len(listed))
  found, missing = locate_images(train_directory, entries)
  return plan_entries(listed, found, missing, validation_split_size, seed, min_images_per_class)
