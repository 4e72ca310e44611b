"""Local features <-> DelfFeatures, DELF's local feature file format.

Wire-compatible with DELF's `delf/python/feature_io.py` (protos/feature.proto).
Conventions, as in DELF:

* `locations` is [N, 2] in (y, x) order, i.e. (row, column) in pixels:
  `locations[i, 0]` is stored in `DelfFeature.y` (field 3) and
  `locations[i, 1]` in `DelfFeature.x` (field 2);
* `attention` is stored in `DelfFeature.strength`;
* orientations default to zero when not given;
* each descriptor is a DatumProto of a 1-D [D] tensor (see datum_io).

Differences from DELF's reader: arrays come back as float32 (DELF returns
float64; the wire holds float32, so nothing is lost), binarised (uint) descriptors
come back as uint32 instead of being cast to float, and an empty feature set
returns five empty arrays with shapes [0, 2], [0], [0, D], [0], [0] (DELF
returns four 1-D empty arrays) where D is `descriptor_dim` (default 0).
"""

from typing import NamedTuple

import numpy as np
from google.protobuf import message as protobuf_message

from dolg_tf.io import datum_io
from dolg_tf.protos import feature_pb2
from dolg_tf.utils import files as file_utils


class LocalFeatures(NamedTuple):
  """The local features of one image (field order = DELF's return order)."""

  locations: np.ndarray  # [N, 2] float32, (y, x)
  scales: np.ndarray  # [N] float32
  descriptors: np.ndarray  # [N, D] float32 (uint32 when binarised)
  attention: np.ndarray  # [N] float32
  orientations: np.ndarray  # [N] float32


def arrays_to_delf_features(
  locations: np.ndarray,
  scales: np.ndarray,
  descriptors: np.ndarray,
  attention: np.ndarray,
  orientations: np.ndarray | None = None,
) -> feature_pb2.DelfFeatures:
  """Converts local feature arrays to a DelfFeatures proto.

  Args:
    locations: [N, 2] keypoint locations, (y, x) in pixels.
    scales: [N] feature scales.
    descriptors: [N, D] descriptors (float, or uint8/uint32/bool when
      binarised; stored with datum_io's dtype rules).
    attention: [N] attention scores (stored as `strength`).
    orientations: [N] orientations; zeros if None.

  Returns:
    The DelfFeatures proto.

  Raises:
    ValueError: naming the argument, if shapes are inconsistent.
  """
  locations = np.asarray(locations)
  scales = np.asarray(scales).reshape(-1)
  descriptors = np.asarray(descriptors)
  attention = np.asarray(attention).reshape(-1)
  num_features = attention.shape[0]
  if orientations is None:
    orientations = np.zeros([num_features], dtype=np.float32)
  orientations = np.asarray(orientations).reshape(-1)
  if locations.ndim != 2 or locations.shape != (num_features, 2):
    raise ValueError(f"locations must be [N, 2] with N = {num_features}, got {locations.shape}")
  if descriptors.ndim != 2 or descriptors.shape[0] != num_features:
    raise ValueError(f"descriptors must be [N, D] with N = {num_features}, got {descriptors.shape}")
  for name, arr in (("scales", scales), ("orientations", orientations)):
    if arr.shape[0] != num_features:
      raise ValueError(f"{name} must have N = {num_features} values, got {arr.shape[0]}")

  features = feature_pb2.DelfFeatures()
  for i in range(num_features):
    feature = features.feature.add()
    feature.y = float(locations[i, 0])
    feature.x = float(locations[i, 1])
    feature.scale = float(scales[i])
    feature.orientation = float(orientations[i])
    feature.strength = float(attention[i])
    feature.descriptor.CopyFrom(datum_io.array_to_datum(descriptors[i]))
  return features


def delf_features_to_arrays(
  features: feature_pb2.DelfFeatures, descriptor_dim: int = 0
) -> LocalFeatures:
  """Converts a DelfFeatures proto to arrays.

  Args:
    features: the DelfFeatures proto.
    descriptor_dim: D of the descriptors array returned for an empty feature
      set (the file does not record it); ignored otherwise.

  Returns:
    A LocalFeatures tuple (locations, scales, descriptors, attention,
    orientations).

  Raises:
    ValueError: if a descriptor is invalid or descriptors differ in shape/dtype.
  """
  num_features = len(features.feature)
  locations = np.zeros([num_features, 2], dtype=np.float32)
  scales = np.zeros([num_features], dtype=np.float32)
  attention = np.zeros([num_features], dtype=np.float32)
  orientations = np.zeros([num_features], dtype=np.float32)
  rows = []
  for i, feature in enumerate(features.feature):
    locations[i, 0] = feature.y
    locations[i, 1] = feature.x
    scales[i] = feature.scale
    attention[i] = feature.strength
    orientations[i] = feature.orientation
    try:
      row = datum_io.datum_to_array(feature.descriptor).reshape(-1)
    except ValueError as e:
      raise ValueError(f"feature {i}: invalid descriptor: {e}") from e
    if rows and (row.shape != rows[0].shape or row.dtype != rows[0].dtype):
      raise ValueError(
        f"feature {i}: descriptor {row.dtype}{list(row.shape)} differs from "
        f"feature 0's {rows[0].dtype}{list(rows[0].shape)}"
      )
    rows.append(row)
  if rows:
    descriptors = np.stack(rows)
  else:
    descriptors = np.zeros([0, descriptor_dim], dtype=np.float32)
  return LocalFeatures(locations, scales, descriptors, attention, orientations)


def serialize(
  locations: np.ndarray,
  scales: np.ndarray,
  descriptors: np.ndarray,
  attention: np.ndarray,
  orientations: np.ndarray | None = None,
) -> bytes:
  """Returns the serialised DelfFeatures of the arrays (see arrays_to_delf_features)."""
  return arrays_to_delf_features(
    locations, scales, descriptors, attention, orientations
  ).SerializeToString()


def parse(data: bytes, descriptor_dim: int = 0) -> LocalFeatures:
  """Parses serialised DelfFeatures into a LocalFeatures tuple.

  Raises:
    ValueError: if `data` is not valid serialised DelfFeatures.
  """
  features = feature_pb2.DelfFeatures()
  try:
    features.ParseFromString(data)
  except protobuf_message.DecodeError as e:
    raise ValueError(f"not serialised DelfFeatures ({e})") from e
  return delf_features_to_arrays(features, descriptor_dim)


def write_to_file(
  path: str,
  locations: np.ndarray,
  scales: np.ndarray,
  descriptors: np.ndarray,
  attention: np.ndarray,
  orientations: np.ndarray | None = None,
) -> None:
  """Writes local features to `path` as DelfFeatures, atomically (no partial files).

  Raises:
    ValueError: if the arrays are inconsistent.
    IOError: naming `path`, if it cannot be written.
  """
  file_utils.atomic_write_bytes(
    path, serialize(locations, scales, descriptors, attention, orientations)
  )


def read_from_file(path: str, descriptor_dim: int = 0) -> LocalFeatures:
  """Reads a DelfFeatures file (e.g. a `.delg_local` or `.delf` file).

  Args:
    path: the file.
    descriptor_dim: D of the descriptors returned when the file holds no
      features.

  Returns:
    A LocalFeatures tuple (locations, scales, descriptors, attention,
    orientations); it unpacks like DELF's five arrays.

  Raises:
    FileNotFoundError: naming `path`, if it does not exist.
    IOError: naming `path`, if it is not a valid DelfFeatures file.
  """
  data = file_utils.read_bytes(path)
  try:
    return parse(data, descriptor_dim)
  except ValueError as e:
    raise OSError(f"{path}: corrupt DelfFeatures file: {e}") from e


# DELF's API (delf/python/feature_io.py): same names, argument order and return
# values, so DELF code runs unchanged with `from dolg_tf.io import feature_io`.
# The bytes written are those of the snake_case functions above. As in DELF,
# the readers return float64 arrays (binarised uint32 descriptors included);
# descriptors follow datum_io.ArrayToDatum's dtype rules. With no features
# they return five empty 1-D float64 arrays (DELF returns four, which cannot
# be unpacked into its five names). Inconsistent shapes raise ValueError
# (DELF asserts). Files are written atomically.


def _delf_arrays(features: LocalFeatures) -> tuple[np.ndarray, ...]:
  if not features.attention.shape[0]:
    return tuple(np.array([]) for _ in range(5))
  return tuple(np.asarray(a, dtype=np.float64) for a in features)


def ArraysToDelfFeatures(  # noqa: N802 (DELF's name)
  locations: np.ndarray,
  scales: np.ndarray,
  descriptors: np.ndarray,
  attention: np.ndarray,
  orientations: np.ndarray | None = None,
) -> feature_pb2.DelfFeatures:
  """DELF's ArraysToDelfFeatures (see arrays_to_delf_features)."""
  descriptors = np.asarray(descriptors)
  if descriptors.dtype.type is np.bool_:
    raise ValueError(f"Unsupported array type: {descriptors.dtype}")
  return arrays_to_delf_features(locations, scales, descriptors, attention, orientations)


def DelfFeaturesToArrays(delf_features: feature_pb2.DelfFeatures) -> tuple[np.ndarray, ...]:  # noqa: N802
  """DELF's DelfFeaturesToArrays: (locations, scales, descriptors, attention, orientations)."""
  return _delf_arrays(delf_features_to_arrays(delf_features))


def SerializeToString(  # noqa: N802
  locations: np.ndarray,
  scales: np.ndarray,
  descriptors: np.ndarray,
  attention: np.ndarray,
  orientations: np.ndarray | None = None,
) -> bytes:
  """DELF's SerializeToString: the serialised DelfFeatures of the arrays."""
  return ArraysToDelfFeatures(
    locations, scales, descriptors, attention, orientations
  ).SerializeToString()


def ParseFromString(string: bytes) -> tuple[np.ndarray, ...]:  # noqa: N802
  """DELF's ParseFromString: the five arrays of serialised DelfFeatures.

  Raises:
    ValueError: if `string` is not valid serialised DelfFeatures.
  """
  return _delf_arrays(parse(string))


def ReadFromFile(file_path: str) -> tuple[np.ndarray, ...]:  # noqa: N802
  """DELF's ReadFromFile: the five arrays of a DelfFeatures file (see read_from_file)."""
  return _delf_arrays(read_from_file(file_path))


def WriteToFile(  # noqa: N802
  file_path: str,
  locations: np.ndarray,
  scales: np.ndarray,
  descriptors: np.ndarray,
  attention: np.ndarray,
  orientations: np.ndarray | None = None,
) -> None:
  """DELF's WriteToFile (the path first, as in DELF), written atomically."""
  file_utils.atomic_write_bytes(
    file_path, SerializeToString(locations, scales, descriptors, attention, orientations)
  )
