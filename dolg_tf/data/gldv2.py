"""Google Landmarks (GLDv1/GLDv2) TFRecords in the layout of DELF's build_image_dataset.

Each record is a tf.train.Example with:
  int64  image/height, image/width, image/channels (3), image/class/label
  bytes  image/format (b'JPEG'), image/colorspace (b'RGB'), image/id,
         image/filename, image/encoded (the JPEG bytes)

Shards are named `<prefix>-00000-of-00004` (DELF's and TF's convention) and
are written atomically: each shard is written under a hidden temporary name in
the same folder and renamed when the writer is closed, so a crashed job never
leaves a truncated shard that matches `<prefix>-*`.
"""

import os

import tensorflow as tf

from dolg_tf.utils import files as file_utils

DATASET_NUM_CLASSES = {"gld_v1": 14951, "gld_v2": 203094, "gld_v2_clean": 81313}

HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
CHANNELS_KEY = "image/channels"
LABEL_KEY = "image/class/label"
FORMAT_KEY = "image/format"
COLORSPACE_KEY = "image/colorspace"
ID_KEY = "image/id"
FILENAME_KEY = "image/filename"
ENCODED_KEY = "image/encoded"

# Label of records that have none (e.g. GLDv2 test images).
NO_LABEL = -1


def num_classes(dataset_version: str, explicit: int | None = None) -> int:
  """Number of classes of a GLD dataset version.

  Args:
    dataset_version: one of DATASET_NUM_CLASSES ('gld_v1', 'gld_v2',
      'gld_v2_clean'); any name when `explicit` is given.
    explicit: a class count that overrides the version (e.g. for synthetic
      data or a relabelled subset); None or 0 to use the version's count.

  Returns:
    The number of classes.

  Raises:
    ValueError: if `explicit` is negative, or the version is unknown and no
      explicit count is given.
  """
  if explicit:
    if explicit < 0:
      raise ValueError(f"num_classes must be positive, got {explicit}")
    return int(explicit)
  if dataset_version not in DATASET_NUM_CLASSES:
    known = ", ".join(sorted(DATASET_NUM_CLASSES))
    raise ValueError(
      f"unknown dataset_version '{dataset_version}' (known: {known}); "
      "give the number of classes explicitly"
    )
  return DATASET_NUM_CLASSES[dataset_version]


def _int64(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _bytes(value: bytes | str) -> tf.train.Feature:
  if isinstance(value, str):
    value = value.encode("utf-8")
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def make_example(
  image_id: str,
  encoded_jpeg: bytes,
  label: int,
  height: int,
  width: int,
  filename: str | None = None,
) -> tf.train.Example:
  """Builds one GLDv2 record.

  Args:
    image_id: the image id (GLDv2: 16 hex digits).
    encoded_jpeg: RGB JPEG bytes.
    label: contiguous class label in [0, num_classes), or NO_LABEL.
    height: image rows.
    width: image columns.
    filename: stored as image/filename; defaults to `<image_id>.jpg`.

  Returns:
    The tf.train.Example.

  Raises:
    ValueError: on an empty id or image, or non-positive sizes.
  """
  if not image_id:
    raise ValueError("image/id must not be empty")
  if not encoded_jpeg:
    raise ValueError(f"image {image_id}: image/encoded is empty")
  if height < 1 or width < 1:
    raise ValueError(f"image {image_id}: bad size {width}x{height}")
  feature = {
    HEIGHT_KEY: _int64(height),
    WIDTH_KEY: _int64(width),
    CHANNELS_KEY: _int64(3),
    LABEL_KEY: _int64(label),
    FORMAT_KEY: _bytes(b"JPEG"),
    COLORSPACE_KEY: _bytes(b"RGB"),
    ID_KEY: _bytes(image_id),
    FILENAME_KEY: _bytes(filename if filename is not None else f"{image_id}.jpg"),
    ENCODED_KEY: _bytes(encoded_jpeg),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_path(prefix: str, index: int, num_shards: int) -> str:
  """`<prefix>-00003-of-00010` for index 3 of 10 shards."""
  return f"{prefix}-{index:05d}-of-{num_shards:05d}"


def shard_pattern(prefix: str) -> str:
  """A glob pattern matching all shards written with `prefix`."""
  return f"{prefix}-?????-of-?????"


class ShardedRecordWriter:
  """Writes serialized records round-robin into `num_shards` TFRecord files.

  Records go to hidden temporary files next to the final ones; `close()`
  renames them to `<prefix>-NNNNN-of-MMMMM` (shards that got no record are
  written empty, so the `-of-` count is always right). `abort()` (or leaving a
  `with` block by an exception) deletes the temporary files. Works with any
  tf.io.gfile file system.

  Example:
    with ShardedRecordWriter("/data/train", 4) as writer:
      writer.write(make_example(...))
  """

  def __init__(self, prefix: str, num_shards: int):
    """Opens the shards.

    Args:
      prefix: output path prefix, e.g. '/data/gldv2/train'; its folder is
        created if needed.
      num_shards: number of files, >= 1.

    Raises:
      ValueError: if num_shards < 1.
    """
    if num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    self.prefix = os.fspath(prefix)
    self.num_shards = num_shards
    folder = os.path.dirname(self.prefix)
    if folder:
      tf.io.gfile.makedirs(folder)
    self.paths = [shard_path(self.prefix, i, num_shards) for i in range(num_shards)]
    self._tmp_paths = [file_utils.temp_path(p) for p in self.paths]
    self.counts = [0] * num_shards
    self._writers = []
    try:
      for tmp in self._tmp_paths:
        self._writers.append(tf.io.TFRecordWriter(tmp))
    except Exception:
      self.abort()
      raise
    self._next = 0
    self._closed = False

  @property
  def num_written(self) -> int:
    return sum(self.counts)

  def write(self, record: tf.train.Example | bytes, shard: int | None = None) -> None:
    """Appends one record (an Example or serialized bytes).

    Args:
      record: the record.
      shard: shard index; None picks the next shard round-robin.
    """
    if self._closed:
      raise ValueError(f"{self.prefix}: writer is closed")
    if isinstance(record, tf.train.Example):
      record = record.SerializeToString(deterministic=True)
    if shard is None:
      shard = self._next
      self._next = (self._next + 1) % self.num_shards
    self._writers[shard].write(record)
    self.counts[shard] += 1

  def close(self) -> list[str]:
    """Flushes and renames the shards to their final names.

    Returns:
      The final shard paths.
    """
    if self._closed:
      return self.paths
    for writer in self._writers:
      writer.close()
    for tmp, final in zip(self._tmp_paths, self.paths):
      tf.io.gfile.rename(tmp, final, overwrite=True)
    self._closed = True
    return self.paths

  def abort(self) -> None:
    """Closes and deletes the temporary files; no shard is published."""
    if self._closed:
      return
    for writer in self._writers:
      try:
        writer.close()
      except Exception:  # pylint: disable=broad-except
        pass
    for tmp in self._tmp_paths:
      try:
        if tf.io.gfile.exists(tmp):
          tf.io.gfile.remove(tmp)
      except tf.errors.OpError:
        pass
    self._closed = True

  def __enter__(self) -> "ShardedRecordWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def feature_spec() -> dict[str, tf.io.FixedLenFeature]:
  """The tf.io parsing spec of a GLDv2 record."""
  return {
    ENCODED_KEY: tf.io.FixedLenFeature([], tf.string),
    ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=NO_LABEL),
    HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
  }


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes JPEG (or PNG/GIF/BMP) bytes to RGB uint8 [H, W, 3]."""
  image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def parse_example(serialized: tf.Tensor, decode: bool = True) -> dict[str, tf.Tensor]:
  """Parses one serialized GLDv2 record (usable in tf.data `map`).

  Args:
    serialized: scalar string tensor.
    decode: decode the image; if False, 'image' is absent and 'encoded' holds
      the JPEG bytes.

  Returns:
    A dict with 'image' (uint8 RGB [H, W, 3]) or 'encoded' (string), 'label'
    (int64 scalar, NO_LABEL if absent), 'id' (string scalar), 'height' and
    'width' (int64 scalars as stored).
  """
  parsed = tf.io.parse_single_example(serialized, feature_spec())
  out = {
    "label": parsed[LABEL_KEY],
    "id": parsed[ID_KEY],
    "height": parsed[HEIGHT_KEY],
    "width": parsed[WIDTH_KEY],
  }
  if decode:
    out["image"] = decode_image(parsed[ENCODED_KEY])
  else:
    out["encoded"] = parsed[ENCODED_KEY]
  return out
