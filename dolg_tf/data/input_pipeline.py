"""tf.data input for training and evaluation on GLDv2-layout TFRecords.

Training: files shuffled, records interleaved and shuffled, repeated forever;
each image gets a random-resized crop (area 0.08-1, aspect 3/4-4/3, as in
DOLG/DELG training) and a random horizontal flip, then is resized to
image_size x image_size. Evaluation: one pass in file order; the central
square of each image (or the whole image) is resized to image_size x
image_size.

Batches are (images, labels): float32 RGB [B, S, S, 3] in [0, 255] (the model
normalises internally) and int32 [B].

Determinism: every random op is seeded. The augmentation of the i-th element
of the (repeated, shuffled) stream uses the stateless seed (seed, i), so the
same seed gives the same batches, and every epoch gets new crops and flips.
`tf.data.Options().deterministic` is set, so parallel maps keep their order.

Checks before training (`check_records`): one pass over each file that reads
the record framing and CRCs and parses only the label feature (images are not
decoded), so a corrupt or truncated file, or a label outside [0, num_classes),
is reported with its file before the first step; the same pass counts the
records of each class (`RecordsCheck.label_counts`). TFRecords have no sync
marks: reading a file stops at its first bad record, so with `skip_corrupt`
(data.skip_corrupt_records) the rest of such a file is left out, and
`make_dataset(skip_corrupt=True)` also drops records whose image does not
decode (each one logged).
"""

import dataclasses
import re

import numpy as np
import tensorflow as tf
from absl import logging

from dolg_tf.data import gldv2, preprocessing
from dolg_tf.utils import progress as progress_lib

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern: str | list[str]) -> list[str]:
  """Sorted files matching a glob pattern (or a comma-separated list / list of patterns).

  Raises:
    FileNotFoundError: naming the pattern, if nothing matches.
  """
  patterns = file_pattern.split(",") if isinstance(file_pattern, str) else list(file_pattern)
  files = sorted({f for p in patterns if p for f in tf.io.gfile.glob(p.strip())})
  if not files:
    raise FileNotFoundError(f"no file matches {file_pattern}")
  return files


class DataError(ValueError):
  """A training or validation file is corrupt or holds unusable labels; the message names it."""


NOT_AN_IMAGE = "image/encoded is not a JPEG, PNG, GIF or BMP image"


# Framing of one TFRecord: uint64 length, uint32 CRC of it, the data, uint32 CRC of the data.
RECORD_OVERHEAD_BYTES = 16
_SCAN_BATCH = 512


@dataclasses.dataclass
class FileScan:
  """What one pass over a TFRecord file found.

  Attributes:
    path: the file.
    num_records: records read before the end or the first bad record.
    min_label: smallest label of those records (None if there is none).
    max_label: largest label of those records (None if there is none).
    bad_label: (record index, label) of the first label outside the checked
      range, or None.
    corrupt: why reading stopped before the end of the file, or None.
    bytes_lost: bytes after the first bad record (left out when skipping).
    classes: the distinct labels of those records, sorted (labels outside
      [0, num_classes) when given, and NO_LABEL, left out).
    class_records: the records of each of `classes` (int64).
    label_range: num_classes when the scan was given it, else 1 + the
      largest label (0 if none): the length of `label_counts`.

  Counts are kept sparse (a file holds far fewer classes than GLDv2's 81,313
  or 203,094), so holding every file's scan costs memory per record, not per
  file and class.
  """

  path: str
  num_records: int = 0
  min_label: int | None = None
  max_label: int | None = None
  bad_label: tuple[int, int] | None = None
  corrupt: str | None = None
  bytes_lost: int = 0
  classes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
  class_records: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
  label_range: int = 0

  @property
  def label_counts(self) -> np.ndarray:
    """Records per class, dense: int64 [label_range]."""
    return _dense_counts([self])


def _label_spec() -> dict[str, tf.io.FixedLenFeature]:
  return {gldv2.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=gldv2.NO_LABEL)}


def _parse_labels(records: tf.Tensor) -> tuple[np.ndarray, int | None]:
  """Labels of a batch of serialized records; (labels so far, index of a non-Example)."""
  # TF quotes the bad bytes in its message, which then may not decode as UTF-8.
  errors = (tf.errors.InvalidArgumentError, UnicodeDecodeError)
  try:
    return tf.io.parse_example(records, _label_spec())[gldv2.LABEL_KEY].numpy(), None
  except errors:
    labels = []
    for i in range(int(tf.size(records))):
      try:
        labels.append(int(tf.io.parse_single_example(records[i], _label_spec())[gldv2.LABEL_KEY]))
      except errors:
        return np.asarray(labels, np.int64), i
    return np.asarray(labels, np.int64), None


def _count_labels(scan: FileScan, chunks: list[np.ndarray], num_classes: int | None) -> None:
  """Sets the scan's per-class counts from the label chunks read (once per file)."""
  labels = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
  if num_classes is None:
    num_classes = max(0, int(labels.max()) + 1) if labels.size else 0
  labels = labels[(labels >= 0) & (labels < num_classes)]
  scan.classes, counts = np.unique(labels.astype(np.int64), return_counts=True)
  scan.class_records = counts.astype(np.int64)
  scan.label_range = num_classes


def _dense_counts(scans: list[FileScan]) -> np.ndarray:
  """Records per class summed over the scans: int64 [largest label_range]."""
  size = max((scan.label_range for scan in scans), default=0)
  total = np.zeros(size, np.int64)
  for scan in scans:
    np.add.at(total, scan.classes, scan.class_records)
  return total


def scan_file(path: str, num_classes: int | None = None) -> FileScan:
  """Reads every record of one TFRecord file once, parsing only its label.

  A record whose length or data CRC is wrong, or a file that ends inside a
  record, stops the pass: the framed size of the records read is then smaller
  than the file.

  Args:
    path: the TFRecord file.
    num_classes: if given, the first label outside [0, num_classes) is kept in
      `bad_label`, and `label_counts` has num_classes entries.

  Returns:
    The FileScan.
  """
  scan = FileScan(path)
  size = tf.io.gfile.stat(path).length
  framed = 0
  dataset = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors().batch(_SCAN_BATCH)
  chunks = []  # labels read, counted once at the end (cheaper than a bincount per batch)
  for records in dataset:
    labels, not_an_example = _parse_labels(records)
    chunks.append(labels)
    if not_an_example is not None:
      lengths = tf.strings.length(records[:not_an_example]).numpy()
      framed += int(lengths.sum()) + RECORD_OVERHEAD_BYTES * len(lengths)
    if labels.size:
      low, high = int(labels.min()), int(labels.max())
      scan.min_label = low if scan.min_label is None else min(scan.min_label, low)
      scan.max_label = high if scan.max_label is None else max(scan.max_label, high)
      if num_classes is not None and scan.bad_label is None:
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
          scan.bad_label = (scan.num_records + int(bad[0]), int(labels[bad[0]]))
    if not_an_example is not None:
      scan.num_records += not_an_example
      scan.corrupt = (
        f"record {scan.num_records} (byte {framed}) has a valid CRC but is not a tf.train.Example"
      )
      scan.bytes_lost = size - framed
      _count_labels(scan, chunks, num_classes)
      return scan
    scan.num_records += int(labels.size)
    framed += int(tf.reduce_sum(tf.strings.length(records))) + RECORD_OVERHEAD_BYTES * labels.size
  if framed != size:
    scan.corrupt = (
      f"record {scan.num_records} at byte {framed} of {size} is truncated or corrupt "
      "(bad length or CRC)"
    )
    scan.bytes_lost = size - framed
  _count_labels(scan, chunks, num_classes)
  return scan


@dataclasses.dataclass
class RecordsCheck:
  """The files of one pattern after `check_records`."""

  files: list[FileScan]

  @property
  def num_records(self) -> int:
    return sum(f.num_records for f in self.files)

  @property
  def corrupt(self) -> list[FileScan]:
    return [f for f in self.files if f.corrupt]

  @property
  def label_counts(self) -> np.ndarray:
    """Readable records per class over all files (int64, num_classes entries).

    Only the files of this check: the trainer's `train_records` counts the
    training files, e.g. for sub-center ArcFace's dynamic margins.
    """
    return _dense_counts(self.files)


def check_records(
  file_pattern: str,
  num_classes: int,
  field: str = "data.train_file_pattern",
  skip_corrupt: bool = False,
) -> RecordsCheck:
  """Checks every file of `file_pattern` before training (see `scan_file`).

  Args:
    file_pattern: as `make_dataset`.
    num_classes: labels must be in [0, num_classes).
    field: the config field of the pattern, for messages.
    skip_corrupt: log corrupt files (and what is lost) instead of failing.

  Returns:
    The RecordsCheck (record count, corrupt files).

  Raises:
    FileNotFoundError: if no file matches (the field and pattern named).
    DataError: a corrupt or truncated file (unless `skip_corrupt`), a label
      outside [0, num_classes), or no record at all (the file named).
  """
  try:
    files = list_files(file_pattern)
  except FileNotFoundError:
    raise FileNotFoundError(f"{field} matches no file: {file_pattern!r}") from None
  progress = progress_lib.Progress(len(files), "checked", "files")
  scans = []
  for path in files:
    scan = scan_file(path, num_classes)
    scans.append(scan)
    progress.update(len(scans))
    if scan.corrupt and not skip_corrupt:
      raise DataError(
        f"{path}: {scan.corrupt}; re-create the file, or set data.skip_corrupt_records=true to "
        f"train without the rest of it ({scan.bytes_lost} bytes)"
      )
    if scan.bad_label is not None:
      index, label = scan.bad_label
      raise DataError(
        f"{path}: record {index} has label {label}, outside [0, {num_classes}) "
        f"(data.num_classes / data.dataset_version give {num_classes} classes)"
      )
  check = RecordsCheck(scans)
  for scan in check.corrupt:
    logging.warning(
      "%s: %s; skipped from there (%d bytes), %d records before it kept",
      scan.path,
      scan.corrupt,
      scan.bytes_lost,
      scan.num_records,
    )
  if check.corrupt:
    logging.warning(
      "%s: %d of %d files are corrupt; %d records readable (data.skip_corrupt_records)",
      field,
      len(check.corrupt),
      len(files),
      check.num_records,
    )
  if not check.num_records:
    raise DataError(f"{field}: the {len(files)} file(s) matching {file_pattern!r} hold no record")
  return check


def checked_decode(encoded: tf.Tensor, image_id: tf.Tensor) -> tf.Tensor:
  """gldv2.decode_image, failing with the record's image/id if the bytes are no image format.

  The error (InvalidArgumentError) holds NOT_AN_IMAGE and `[image/id] [<id>]`
  (see `image_error`).
  """
  head = tf.strings.substr(encoded, 0, 4)
  is_image = tf.reduce_any(
    [
      tf.strings.substr(head, 0, 2) == b"\xff\xd8",
      head == b"\x89PNG",
      tf.strings.substr(head, 0, 3) == b"GIF",
      tf.strings.substr(head, 0, 2) == b"BM",
    ]
  )
  check = tf.debugging.Assert(is_image, ["image/id", image_id, NOT_AN_IMAGE])
  with tf.control_dependencies([check]):
    return gldv2.decode_image(tf.identity(encoded))


def image_error(error: Exception) -> str | None:
  """A one-line description if `error` is an image of the input that does not decode, else None."""
  if not isinstance(error, tf.errors.InvalidArgumentError):
    return None
  message = str(error.message)
  if NOT_AN_IMAGE in message:
    found = re.search(r"\[image/id\] \[(.*?)\]", message)
    return f"record with image/id {found.group(1) if found else '?'}: {NOT_AN_IMAGE}"
  if re.search(r"JPEG|PNG|GIF|BMP|image file format", message):
    return "an image does not decode (" + " ".join(message.split())[:120] + ")"
  return None


def _serialized_records(
  files: list[str],
  training: bool,
  seed: int,
  shuffle_buffer_size: int,
  cycle_length: int,
  input_context: tf.distribute.InputContext | None,
  skip_corrupt: bool,
) -> tf.data.Dataset:
  """The records of `files` for this input pipeline, shuffled when training (not repeated).

  Files are sharded across input pipelines, or the records when there are
  fewer files than pipelines.
  """
  dataset = tf.data.Dataset.from_tensor_slices(files)
  shard_records = False
  if input_context is not None and input_context.num_input_pipelines > 1:
    if len(files) >= input_context.num_input_pipelines:
      dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    else:
      shard_records = True
  if training:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

  def read(path):
    records = tf.data.TFRecordDataset(path, buffer_size=8 << 20)
    return records.ignore_errors(log_warning=True) if skip_corrupt else records

  dataset = dataset.interleave(
    read,
    cycle_length=max(1, min(cycle_length, len(files))),
    block_length=1,
    num_parallel_calls=AUTOTUNE,
    deterministic=True,
  )
  if shard_records:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if training:
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
  return dataset


def _parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(checked decoded RGB uint8 image, int32 label) of one serialized record."""
  parsed = gldv2.parse_example(serialized, decode=False)
  return checked_decode(parsed["encoded"], parsed["id"]), tf.cast(parsed["label"], tf.int32)


def _images_and_labels(
  records: tf.data.Dataset,
  training: bool,
  image_size: int,
  seed: int,
  center_crop: bool,
  crop_area_range: tuple[float, float],
) -> tf.data.Dataset:
  """Decoded and preprocessed (image, label) pairs: augmented per element when training."""
  if training:
    base_seed = tf.constant(seed, tf.int64)

    def train_map(index, serialized):
      image, label = _parse(serialized)
      element_seed = tf.stack([base_seed, index])
      return preprocessing.preprocess_train(image, image_size, element_seed, crop_area_range), label

    return records.enumerate().map(train_map, num_parallel_calls=AUTOTUNE, deterministic=True)

  def eval_map(serialized):
    image, label = _parse(serialized)
    return preprocessing.preprocess_eval(image, image_size, center_crop), label

  return records.map(eval_map, num_parallel_calls=AUTOTUNE, deterministic=True)


def make_dataset(
  file_pattern: str | list[str],
  batch_size: int,
  image_size: int,
  training: bool,
  seed: int = 0,
  drop_remainder: bool | None = None,
  shuffle_buffer_size: int = 1024,
  cycle_length: int = 16,
  center_crop: bool = True,
  repeat: bool | None = None,
  input_context: tf.distribute.InputContext | None = None,
  crop_area_range: tuple[float, float] = (0.08, 1.0),
  skip_corrupt: bool = False,
) -> tf.data.Dataset:
  """Batches of (images, labels) from GLDv2-layout TFRecords.

  Args:
    file_pattern: glob pattern(s) of the TFRecord files (comma-separated or a
      list).
    batch_size: examples per batch (per replica under tf.distribute).
    image_size: side of the square output images.
    training: augment, shuffle and (by default) repeat; else one ordered pass.
    seed: seed of the file and record shuffles and of the augmentations.
    drop_remainder: drop a last partial batch (static batch size, as
      tf.distribute and TPUs need). None: True for training, False else.
    shuffle_buffer_size: records in the shuffle buffer (training).
    cycle_length: files read concurrently.
    center_crop: evaluation only: resize the central square (True) or the
      whole image (False, aspect not kept).
    repeat: repeat forever; None: same as `training`.
    crop_area_range: training: relative area range of the random-resized crop.
    input_context: tf.distribute input context; the files (or, with fewer
      files than pipelines, the records) are sharded across input pipelines.

  Returns:
    A tf.data.Dataset of (float32 [B, S, S, 3] in [0, 255], int32 [B]).

  Raises:
    FileNotFoundError: if no file matches.
    ValueError: on a non-positive batch or image size.
  """
  if batch_size < 1 or image_size < 1:
    raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
  if drop_remainder is None:
    drop_remainder = training
  if repeat is None:
    repeat = training
  files = list_files(file_pattern)
  dataset = _serialized_records(
    files, training, seed, shuffle_buffer_size, cycle_length, input_context, skip_corrupt
  )
  if repeat:
    dataset = dataset.repeat()
  dataset = _images_and_labels(dataset, training, image_size, seed, center_crop, crop_area_range)
  if skip_corrupt:
    dataset = dataset.ignore_errors(log_warning=True)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  dataset = dataset.prefetch(AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  if input_context is not None:
    # Already sharded above; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return dataset.with_options(options)
