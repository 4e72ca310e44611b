"""Tests for dolg_tf.io.datum_io."""

import os
import re

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.io import datum_io
from dolg_tf.protos import datum_pb2


class DatumIoTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.named_parameters(
    ("float32_1d", np.float32, [7], np.float32),
    ("float32_3d", np.float32, [2, 3, 4], np.float32),
    ("float64_2d", np.float64, [4, 5], np.float32),
    ("float16_2d", np.float16, [3, 2], np.float32),
    ("uint8_3d", np.uint8, [2, 2, 3], np.uint32),
    ("uint16_2d", np.uint16, [3, 3], np.uint32),
    ("uint32_2d", np.uint32, [2, 6], np.uint32),
    ("scalar", np.float32, [], np.float32),
    ("empty_rows", np.float32, [0, 128], np.float32),
    ("empty_uint", np.uint8, [0], np.uint32),
  )
  def test_round_trip(self, dtype, shape, read_dtype):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
      array = rng.normal(size=shape).astype(dtype)
    else:
      array = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    restored = datum_io.parse_array(datum_io.serialize_array(array))
    self.assertEqual(restored.dtype, read_dtype)
    self.assertEqual(restored.shape, tuple(shape))
    np.testing.assert_array_equal(restored, array.astype(read_dtype))

  def test_float64_is_stored_as_float32(self):
    array = np.array([1.0 / 3.0, 1e-50, -2.5], dtype=np.float64)
    restored = datum_io.parse_array(datum_io.serialize_array(array))
    self.assertEqual(restored.dtype, np.float32)
    np.testing.assert_array_equal(restored, array.astype(np.float32))
    self.assertNotEqual(float(restored[0]), 1.0 / 3.0)  # precision is lost, as in DELF
    self.assertEqual(restored[1], 0.0)  # float32 underflow

  def test_uint32_extremes_and_bool(self):
    array = np.array([0, 1, 2**32 - 1], dtype=np.uint32)
    np.testing.assert_array_equal(datum_io.parse_array(datum_io.serialize_array(array)), array)
    flags = np.array([[True, False], [False, True]])
    restored = datum_io.parse_array(datum_io.serialize_array(flags))
    self.assertEqual(restored.dtype, np.uint32)
    np.testing.assert_array_equal(restored.astype(bool), flags)

  def test_row_major_layout(self):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    datum = datum_io.array_to_datum(np.asfortranarray(array))
    self.assertEqual(list(datum.shape.dim), [2, 3])
    self.assertEqual(list(datum.float_list.value), [0, 1, 2, 3, 4, 5])
    self.assertEqual(datum.WhichOneof("kind_oneof"), "float_list")
    uint_datum = datum_io.array_to_datum(np.arange(4, dtype=np.uint8))
    self.assertEqual(uint_datum.WhichOneof("kind_oneof"), "uint32_list")

  def test_empty_array_keeps_its_kind(self):
    datum = datum_pb2.DatumProto.FromString(datum_io.serialize_array(np.zeros([0], np.float32)))
    self.assertEqual(datum.WhichOneof("kind_oneof"), "float_list")

  @parameterized.parameters(np.int32, np.int64, np.int8, np.complex64)
  def test_unsupported_dtype(self, dtype):
    with self.assertRaisesRegex(ValueError, "unsupported array dtype"):
      datum_io.array_to_datum(np.zeros([3], dtype=dtype))

  def test_uint64(self):
    small = np.array([1, 2**32 - 1], dtype=np.uint64)
    np.testing.assert_array_equal(datum_io.parse_array(datum_io.serialize_array(small)), small)
    with self.assertRaisesRegex(ValueError, "above 4294967295"):
      datum_io.array_to_datum(np.array([2**32], dtype=np.uint64))

  def test_pair_round_trip(self):
    first = np.random.default_rng(1).normal(size=[3, 4]).astype(np.float32)
    second = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    got_first, got_second = datum_io.parse_array_pair(datum_io.serialize_array_pair(first, second))
    np.testing.assert_array_equal(got_first, first)
    np.testing.assert_array_equal(got_second, second)
    self.assertEqual(got_second.dtype, np.uint32)

  def test_file_round_trip_is_atomic(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "image.dolg_global")
    array = np.random.default_rng(2).normal(size=[512]).astype(np.float32)
    datum_io.write_to_file(path, array)
    datum_io.write_to_file(path, array * 2)  # overwrites in place
    np.testing.assert_array_equal(datum_io.read_from_file(path), array * 2)
    pair_path = os.path.join(folder, "pair.datum")
    datum_io.write_pair_to_file(pair_path, array, array[:3])
    got_first, got_second = datum_io.read_pair_from_file(pair_path)
    np.testing.assert_array_equal(got_first, array)
    np.testing.assert_array_equal(got_second, array[:3])
    self.assertCountEqual(os.listdir(folder), ["image.dolg_global", "pair.datum"])

  def test_failed_write_leaves_nothing(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "bad.datum")
    with self.assertRaises(ValueError):
      datum_io.write_to_file(path, np.zeros([2], np.int64))
    self.assertEqual(os.listdir(folder), [])
    missing_dir = os.path.join(folder, "no_such_dir", "x.datum")
    with self.assertRaisesRegex(IOError, re.escape(missing_dir)):
      datum_io.write_to_file(missing_dir, np.zeros([2], np.float32))
    self.assertEqual(os.listdir(folder), [])

  def test_missing_file_error_names_file(self):
    path = os.path.join(self.create_tempdir().full_path, "missing.dolg_global")
    with self.assertRaisesRegex(FileNotFoundError, re.escape(path)):
      datum_io.read_from_file(path)

  @parameterized.named_parameters(
    ("truncated", b"\x12\x08\x0d\x00\x00"),
    ("garbage", b"\xff\xff\xff\xff"),
    ("empty", b""),
    ("shape_mismatch", None),
  )
  def test_corrupt_file_error_names_file(self, content):
    if content is None:
      datum = datum_io.array_to_datum(np.zeros([2, 3], np.float32))
      datum.shape.dim[0] = 5
      content = datum.SerializeToString()
    path = self.create_tempfile("corrupt.dolg_global", content=content, mode="wb").full_path
    with self.assertRaisesRegex(IOError, re.escape(path) + ": corrupt DatumProto file"):
      datum_io.read_from_file(path)

  def test_corrupt_pair_file_error_names_file(self):
    path = self.create_tempfile("corrupt.pair", content=b"\x0a\x05\x0a", mode="wb").full_path
    with self.assertRaisesRegex(IOError, re.escape(path) + ": corrupt DatumPairProto file"):
      datum_io.read_pair_from_file(path)

  def test_every_truncation_of_a_descriptor_file_is_refused_naming_it(self):
    data = datum_io.serialize_array(np.arange(16, dtype=np.float32))
    path = os.path.join(self.create_tempdir().full_path, "cut.dolg_global")
    for cut in range(len(data)):
      with open(path, "wb") as f:
        f.write(data[:cut])
      with self.assertRaisesRegex(
        IOError, "^" + re.escape(path) + ": corrupt DatumProto file: .*truncated", msg=cut
      ):
        datum_io.read_from_file(path)
    with open(path, "wb") as f:
      f.write(data)
    self.assertAllEqual(datum_io.read_from_file(path), np.arange(16))


class DelfApiTest(tf.test.TestCase, parameterized.TestCase):
  """DELF's CamelCase API (delf/python/datum_io.py names and argument order)."""

  @parameterized.named_parameters(
    ("float64", np.float64, np.float32),
    ("float16", np.float16, np.float32),
    ("float32", np.float32, np.float32),
    ("uint8", np.uint8, np.uint32),
    ("uint64", np.uint64, np.uint32),
  )
  def test_round_trip_dtypes_and_same_bytes(self, dtype, read_dtype):
    array = (np.arange(24).reshape([2, 3, 4]) * 3).astype(dtype)
    data = datum_io.SerializeToString(array)
    self.assertEqual(data, datum_io.serialize_array(array))
    back = datum_io.ParseFromString(data)
    self.assertEqual(back.dtype, read_dtype)
    self.assertAllEqual(back, array.astype(read_dtype))
    self.assertAllEqual(datum_io.DatumToArray(datum_io.ArrayToDatum(array)), back)

  @parameterized.named_parameters(("bool", np.bool_), ("int32", np.int32), ("str", np.str_))
  def test_unsupported_dtypes_raise_value_error(self, dtype):
    with self.assertRaisesRegex(ValueError, "nsupported"):
      datum_io.ArrayToDatum(np.zeros([3], dtype=dtype))

  def test_empty_array_round_trips(self):
    array = np.zeros([0, 8], np.float32)
    self.assertEqual(datum_io.ParseFromString(datum_io.SerializeToString(array)).shape, (0, 8))

  def test_write_to_file_takes_data_first(self):
    path = os.path.join(self.get_temp_dir(), "x.delg_global")
    array = np.linspace(-1, 1, 7).astype(np.float32)
    datum_io.WriteToFile(array, path)
    self.assertAllEqual(datum_io.ReadFromFile(path), array)
    other = os.path.join(self.get_temp_dir(), "y.delg_global")
    datum_io.write_to_file(other, array)
    with open(path, "rb") as f, open(other, "rb") as g:
      self.assertEqual(f.read(), g.read())
    self.assertEqual(sorted(os.listdir(self.get_temp_dir())).count("x.delg_global"), 1)

  def test_pair_functions(self):
    first = np.arange(6, dtype=np.float32).reshape([2, 3])
    second = np.arange(4, dtype=np.uint8)
    data = datum_io.SerializePairToString(first, second)
    self.assertEqual(data, datum_io.serialize_array_pair(first, second))
    a, b = datum_io.ParsePairFromString(data)
    self.assertAllEqual(a, first)
    self.assertAllEqual(b, second)
    self.assertEqual(b.dtype, np.uint32)
    a, b = datum_io.DatumPairToArrays(datum_io.ArraysToDatumPair(first, second))
    self.assertAllEqual(a, first)
    path = os.path.join(self.get_temp_dir(), "pair.datum")
    datum_io.WritePairToFile(first, second, path)
    a, b = datum_io.ReadPairFromFile(path)
    self.assertAllEqual(a, first)
    self.assertAllEqual(b, second)

  def test_read_missing_file(self):
    with self.assertRaises(FileNotFoundError):
      datum_io.ReadFromFile(os.path.join(self.get_temp_dir(), "absent"))


if __name__ == "__main__":
  tf.test.main()
