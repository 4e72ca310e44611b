"""NumPy arrays <-> DatumProto, the tensor format of DELF's descriptor files.

Wire-compatible with DELF's `delf/python/datum_io.py` (see protos/datum.proto):

* float16 / float32 / float64 arrays are stored in `float_list` as float32
  (float64 loses precision, as in DELF);
* uint8 / uint16 / uint32 and bool arrays are stored in `uint32_list`; uint64
  is accepted only when every value fits in 32 bits (DELF truncates silently);
* signed integers and other dtypes are rejected (DELF rejects them too);
* values are row-major and the shape goes into `shape.dim`.

Reading returns float32 for `float_list` and uint32 for `uint32_list`, as
DELF's `DatumToArray` does: the original dtype (e.g. uint8, bool, float64) is
not recorded on the wire, so cast after reading if you need it back.
"""

import math

import numpy as np
from google.protobuf import message as protobuf_message

from dolg_tf.protos import datum_pb2
from dolg_tf.utils import files as file_utils

_FLOAT_KINDS = (np.float16, np.float32, np.float64)
_UINT32_KINDS = (np.bool_, np.uint8, np.uint16, np.uint32)


def array_to_datum(array: np.ndarray) -> datum_pb2.DatumProto:
  """Converts a NumPy array to a DatumProto.

  Args:
    array: array of any shape (0-d and empty arrays included) with a dtype
      listed in the module docstring.

  Returns:
    The DatumProto holding `array`'s shape and values.

  Raises:
    ValueError: if the dtype is unsupported or uint64 values exceed 32 bits.
  """
  array = np.asarray(array)
  datum = datum_pb2.DatumProto()
  datum.shape.dim.extend(int(d) for d in array.shape)
  dtype = array.dtype.type
  if dtype in _FLOAT_KINDS:
    datum.float_list.SetInParent()  # present even when the array is empty
    datum.float_list.value.extend(array.astype(np.float32).ravel(order="C").tolist())
  elif dtype in _UINT32_KINDS or dtype is np.uint64:
    if dtype is np.uint64 and array.size and int(array.max()) > np.iinfo(np.uint32).max:
      raise ValueError(
        f"uint64 array has values above {np.iinfo(np.uint32).max}; DatumProto stores uint32"
      )
    datum.uint32_list.SetInParent()
    datum.uint32_list.value.extend(array.astype(np.uint32).ravel(order="C").tolist())
  else:
    raise ValueError(
      f"unsupported array dtype {array.dtype} for DatumProto "
      "(use float16/32/64, uint8/16/32 or bool)"
    )
  return datum


def datum_to_array(datum: datum_pb2.DatumProto) -> np.ndarray:
  """Converts a DatumProto to a NumPy array (float32 or uint32, see module doc).

  Args:
    datum: a DatumProto with a shape and one of float_list / uint32_list.

  Returns:
    The array, shaped as `datum.shape.dim`.

  Raises:
    ValueError: if the datum has no values list or its shape does not match
      the number of values.
  """
  kind = datum.WhichOneof("kind_oneof")
  if kind == "float_list":
    values = np.array(datum.float_list.value, dtype=np.float32)
  elif kind == "uint32_list":
    values = np.array(datum.uint32_list.value, dtype=np.uint32)
  else:
    raise ValueError("DatumProto has neither float_list nor uint32_list")
  shape = tuple(int(d) for d in datum.shape.dim)
  if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != values.size:
    raise ValueError(f"DatumProto shape {list(shape)} does not match its {values.size} values")
  return values.reshape(shape)


def arrays_to_datum_pair(first: np.ndarray, second: np.ndarray) -> datum_pb2.DatumPairProto:
  """Converts two arrays to a DatumPairProto (same dtype rules as above)."""
  pair = datum_pb2.DatumPairProto()
  pair.first.CopyFrom(array_to_datum(first))
  pair.second.CopyFrom(array_to_datum(second))
  return pair


def datum_pair_to_arrays(pair: datum_pb2.DatumPairProto) -> tuple[np.ndarray, np.ndarray]:
  """Converts a DatumPairProto to its two arrays (first, second)."""
  return datum_to_array(pair.first), datum_to_array(pair.second)


def serialize_array(array: np.ndarray) -> bytes:
  """Returns the serialised DatumProto of `array`."""
  return array_to_datum(array).SerializeToString()


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  """(value, next position) of the base-128 varint at `data[pos:]`."""
  value, shift = 0, 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return value, pos
    shift += 7


def _packed_floats(data: bytes, count: int) -> np.ndarray | None:
  """The `count` float_list values of a parsed DatumProto read straight from its bytes.

  Converting the parsed repeated field costs ~0.3 ms for 512 floats (one
  Python float each); a file written as every writer does (one packed run of
  values) is read with np.frombuffer instead. None for any other layout (the
  caller then converts the parsed field).
  """
  if count == 0:
    return None
  try:
    pos, found = 0, None
    while pos < len(data):
      tag, pos = _varint(data, pos)
      if tag & 7 != 2:  # DatumProto's fields are all length-delimited.
        return None
      length, pos = _varint(data, pos)
      if tag >> 3 == 2:  # float_list
        if found is not None:
          return None
        inner, end = pos, pos + length
        tag, inner = _varint(data, inner)
        size, inner = _varint(data, inner)
        if tag != 0x0A or size != 4 * count or inner + size != end:
          return None
        found = inner
      pos += length
    if found is None:
      return None
    return np.frombuffer(data, "<f4", count=count, offset=found).astype(np.float32)
  except IndexError:
    return None


def parse_array(data: bytes) -> np.ndarray:
  """Parses a serialised DatumProto into an array.

  Raises:
    ValueError: if `data` is not a valid DatumProto.
  """
  datum = datum_pb2.DatumProto()
  try:
    datum.ParseFromString(data)
  except protobuf_message.DecodeError as e:
    raise ValueError(f"not a serialised DatumProto ({e})") from e
  if datum.WhichOneof("kind_oneof") == "float_list":
    values = _packed_floats(data, len(datum.float_list.value))
    if values is not None:
      shape = tuple(int(d) for d in datum.shape.dim)
      if any(d < 0 for d in shape) or math.prod(shape) != values.size:
        raise ValueError(f"DatumProto shape {list(shape)} does not match its {values.size} values")
      return values.reshape(shape)
  return datum_to_array(datum)


def serialize_array_pair(first: np.ndarray, second: np.ndarray) -> bytes:
  """Returns the serialised DatumPairProto of two arrays."""
  return arrays_to_datum_pair(first, second).SerializeToString()


def parse_array_pair(data: bytes) -> tuple[np.ndarray, np.ndarray]:
  """Parses a serialised DatumPairProto into its two arrays.

  Raises:
    ValueError: if `data` is not a valid DatumPairProto.
  """
  pair = datum_pb2.DatumPairProto()
  try:
    pair.ParseFromString(data)
  except protobuf_message.DecodeError as e:
    raise ValueError(f"not a serialised DatumPairProto ({e})") from e
  return datum_pair_to_arrays(pair)


def write_to_file(path: str, array: np.ndarray) -> None:
  """Writes `array` to `path` as a DatumProto, atomically (no partial files).

  Note the argument order (path first) differs from DELF's WriteToFile.

  Raises:
    ValueError: if the dtype is unsupported.
    IOError: naming `path`, if it cannot be written.
  """
  file_utils.atomic_write_bytes(path, serialize_array(array))


def read_from_file(path: str) -> np.ndarray:
  """Reads a DatumProto file (e.g. a `.dolg_global` / `.delg_global` file).

  Raises:
    FileNotFoundError: naming `path`, if it does not exist.
    IOError: naming `path`, if it is not a valid DatumProto file (empty,
      truncated or garbage).
  """
  data = file_utils.read_bytes(path)
  if not data:  # every written DatumProto has a values list, so at least 2 bytes
    raise OSError(f"{path}: corrupt DatumProto file: empty (truncated, or not a DatumProto)")
  try:
    return parse_array(data)
  except ValueError as e:
    raise OSError(f"{path}: corrupt DatumProto file: {e} (truncated, or not a DatumProto)") from e


def write_pair_to_file(path: str, first: np.ndarray, second: np.ndarray) -> None:
  """Writes two arrays to `path` as a DatumPairProto, atomically.

  Raises:
    ValueError: if a dtype is unsupported.
    IOError: naming `path`, if it cannot be written.
  """
  file_utils.atomic_write_bytes(path, serialize_array_pair(first, second))


def read_pair_from_file(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a DatumPairProto file into its two arrays (first, second).

  Raises:
    FileNotFoundError: naming `path`, if it does not exist.
    IOError: naming `path`, if it is not a valid DatumPairProto file.
  """
  data = file_utils.read_bytes(path)
  try:
    return parse_array_pair(data)
  except ValueError as e:
    raise OSError(f"{path}: corrupt DatumPairProto file: {e}") from e


# DELF's API (delf/python/datum_io.py): same names, argument order and return
# values, so DELF code runs unchanged with `from dolg_tf.io import datum_io`.
# The bytes written are those of the snake_case functions above. Differences
# from DELF: bool arrays are rejected as DELF rejects them (array_to_datum
# accepts them); uint64 values above 32 bits raise ValueError instead of
# being truncated; an empty float array is written with an (empty) float_list
# present, so ParseFromString / ReadFromFile give it back (DELF's reader raises
# on its own empty arrays); files are written atomically.


def ArrayToDatum(arr: np.ndarray) -> datum_pb2.DatumProto:  # noqa: N802 (DELF's name)
  """DELF's ArrayToDatum: float16/32/64 -> float32, uint8/16/32/64 -> uint32.

  Raises:
    ValueError: any other dtype (bool and signed integers included).
  """
  arr = np.asarray(arr)
  if arr.dtype.type is np.bool_:
    raise ValueError(f"Unsupported array type: {arr.dtype}")
  return array_to_datum(arr)


def DatumToArray(datum: datum_pb2.DatumProto) -> np.ndarray:  # noqa: N802
  """DELF's DatumToArray: a float32 or uint32 array shaped as `datum.shape.dim`."""
  return datum_to_array(datum)


def ArraysToDatumPair(arr_1: np.ndarray, arr_2: np.ndarray) -> datum_pb2.DatumPairProto:  # noqa: N802
  """DELF's ArraysToDatumPair (ArrayToDatum's dtype rules)."""
  pair = datum_pb2.DatumPairProto()
  pair.first.CopyFrom(ArrayToDatum(arr_1))
  pair.second.CopyFrom(ArrayToDatum(arr_2))
  return pair


def DatumPairToArrays(datum_pair: datum_pb2.DatumPairProto) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802
  """DELF's DatumPairToArrays: the two arrays (first, second)."""
  return datum_pair_to_arrays(datum_pair)


def SerializeToString(arr: np.ndarray) -> bytes:  # noqa: N802
  """DELF's SerializeToString: the serialised DatumProto of `arr`."""
  return ArrayToDatum(arr).SerializeToString()


def SerializePairToString(arr_1: np.ndarray, arr_2: np.ndarray) -> bytes:  # noqa: N802
  """DELF's SerializePairToString: the serialised DatumPairProto of two arrays."""
  return ArraysToDatumPair(arr_1, arr_2).SerializeToString()


def ParseFromString(string: bytes) -> np.ndarray:  # noqa: N802
  """DELF's ParseFromString: the array of a serialised DatumProto.

  Raises:
    ValueError: if `string` is not a valid DatumProto.
  """
  return parse_array(string)


def ParsePairFromString(string: bytes) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802
  """DELF's ParsePairFromString: the two arrays of a serialised DatumPairProto."""
  return parse_array_pair(string)


def ReadFromFile(file_path: str) -> np.ndarray:  # noqa: N802
  """DELF's ReadFromFile: the array of a DatumProto file (see read_from_file)."""
  return read_from_file(file_path)


def ReadPairFromFile(file_path: str) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802
  """DELF's ReadPairFromFile: the two arrays of a DatumPairProto file."""
  return read_pair_from_file(file_path)


def WriteToFile(data: np.ndarray, file_path: str) -> None:  # noqa: N802
  """DELF's WriteToFile (data first, then the path), written atomically."""
  file_utils.atomic_write_bytes(file_path, SerializeToString(data))


def WritePairToFile(arr_1: np.ndarray, arr_2: np.ndarray, file_path: str) -> None:  # noqa: N802
  """DELF's WritePairToFile (the arrays first, then the path), written atomically."""
  file_utils.atomic_write_bytes(file_path, SerializePairToString(arr_1, arr_2))
