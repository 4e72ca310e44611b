"""Tests for dolg_tf.io.feature_io."""

import os
import re

import numpy as np
import tensorflow as tf

from dolg_tf.io import feature_io
from dolg_tf.protos import feature_pb2


def _random_features(num_features, dim, seed=0):
  rng = np.random.default_rng(seed)
  locations = rng.uniform(0, 500, size=[num_features, 2]).astype(np.float32)
  scales = rng.choice([0.5, 1.0, 2.0], size=[num_features]).astype(np.float32)
  descriptors = rng.normal(size=[num_features, dim]).astype(np.float32)
  attention = rng.uniform(0, 300, size=[num_features]).astype(np.float32)
  orientations = rng.uniform(-np.pi, np.pi, size=[num_features]).astype(np.float32)
  return locations, scales, descriptors, attention, orientations


class FeatureIoTest(tf.test.TestCase):
  def test_round_trip(self):
    arrays = _random_features(20, 128)
    restored = feature_io.parse(feature_io.serialize(*arrays))
    self.assertLen(restored, 5)
    for name, want, got in zip(restored._fields, arrays, restored):
      self.assertEqual(got.dtype, np.float32, name)
      self.assertEqual(got.shape, want.shape, name)
      np.testing.assert_array_equal(got, want, err_msg=name)

  def test_locations_are_y_x(self):
    locations = np.array([[10.0, 20.0], [30.5, 40.25]], dtype=np.float32)
    features = feature_io.arrays_to_delf_features(
      locations, np.ones([2]), np.zeros([2, 4], np.float32), np.array([1.0, 2.0])
    )
    self.assertEqual([(f.y, f.x) for f in features.feature], [(10.0, 20.0), (30.5, 40.25)])
    self.assertEqual([f.strength for f in features.feature], [1.0, 2.0])
    self.assertEqual([f.orientation for f in features.feature], [0.0, 0.0])  # default
    self.assertEqual(list(features.feature[0].descriptor.shape.dim), [4])

  def test_float64_inputs_and_uint_descriptors(self):
    locations, scales, _, attention, _ = _random_features(5, 8)
    bits = np.packbits(np.random.default_rng(3).normal(size=[5, 128]) > 0, axis=1)
    restored = feature_io.parse(
      feature_io.serialize(
        locations.astype(np.float64), scales.astype(np.float64), bits, attention.astype(np.float64)
      )
    )
    self.assertEqual(restored.descriptors.dtype, np.uint32)
    np.testing.assert_array_equal(restored.descriptors, bits)
    np.testing.assert_array_equal(restored.locations, locations)
    np.testing.assert_array_equal(restored.orientations, np.zeros([5], np.float32))

  def test_empty_feature_set(self):
    arrays = (
      np.zeros([0, 2], np.float32),
      np.zeros([0], np.float32),
      np.zeros([0, 128], np.float32),
      np.zeros([0], np.float32),
    )
    data = feature_io.serialize(*arrays)
    self.assertEqual(data, b"")
    restored = feature_io.parse(data)
    self.assertEqual([a.shape for a in restored], [(0, 2), (0,), (0, 0), (0,), (0,)])
    restored = feature_io.parse(data, descriptor_dim=128)
    self.assertEqual(restored.descriptors.shape, (0, 128))
    path = os.path.join(self.create_tempdir().full_path, "empty.delg_local")
    feature_io.write_to_file(path, *arrays)
    locations, scales, descriptors, attention, orientations = feature_io.read_from_file(path)
    self.assertEqual(locations.shape, (0, 2))
    self.assertEqual(descriptors.shape, (0, 0))

  def test_file_round_trip_is_atomic(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "image.delg_local")
    arrays = _random_features(50, 128, seed=4)
    feature_io.write_to_file(path, *arrays)
    restored = feature_io.read_from_file(path)
    for want, got in zip(arrays, restored):
      np.testing.assert_array_equal(got, want)
    self.assertEqual(os.listdir(folder), ["image.delg_local"])

  def test_inconsistent_arrays(self):
    locations, scales, descriptors, attention, orientations = _random_features(4, 8)
    cases = {
      "locations": (locations[:3], scales, descriptors, attention, None),
      "descriptors": (locations, scales, descriptors[:, 0], attention, None),
      "scales": (locations, scales[:2], descriptors, attention, None),
      "orientations": (locations, scales, descriptors, attention, orientations[:1]),
    }
    for name, args in cases.items():
      with self.assertRaisesRegex(ValueError, name):
        feature_io.serialize(*args)

  def test_mixed_descriptor_dims_rejected(self):
    features = feature_io.arrays_to_delf_features(*_random_features(2, 8))
    other = feature_io.arrays_to_delf_features(*_random_features(1, 4))
    features.feature.append(other.feature[0])
    with self.assertRaisesRegex(ValueError, "feature 2: descriptor"):
      feature_io.delf_features_to_arrays(features)

  def test_missing_and_corrupt_files_name_the_file(self):
    folder = self.create_tempdir().full_path
    missing = os.path.join(folder, "missing.delg_local")
    with self.assertRaisesRegex(FileNotFoundError, re.escape(missing)):
      feature_io.read_from_file(missing)
    corrupt = os.path.join(folder, "corrupt.delg_local")
    with open(corrupt, "wb") as f:
      f.write(b"\x0a\x10\x15\x00")
    with self.assertRaisesRegex(IOError, re.escape(corrupt) + ": corrupt DelfFeatures"):
      feature_io.read_from_file(corrupt)
    no_descriptor = feature_pb2.DelfFeatures()
    no_descriptor.feature.add().x = 1.0
    with open(corrupt, "wb") as f:
      f.write(no_descriptor.SerializeToString())
    with self.assertRaisesRegex(IOError, re.escape(corrupt) + ".*feature 0: invalid descriptor"):
      feature_io.read_from_file(corrupt)

  def test_truncated_file_inside_a_feature_names_the_file(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "cut.delg_local")
    feature_io.write_to_file(path, np.ones([3, 2]), np.ones(3), np.ones([3, 8]), np.ones(3))
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:-5])  # inside the last feature
    with self.assertRaisesRegex(IOError, "^" + re.escape(path) + ": corrupt DelfFeatures file"):
      feature_io.read_from_file(path)


class DelfApiTest(tf.test.TestCase):
  """DELF's CamelCase API (delf/python/feature_io.py names and argument order)."""

  def test_round_trip_in_delf_order_and_same_bytes(self):
    locations, scales, descriptors, attention, orientations = _random_features(9, 16)
    data = feature_io.SerializeToString(locations, scales, descriptors, attention, orientations)
    self.assertEqual(
      data, feature_io.serialize(locations, scales, descriptors, attention, orientations)
    )
    back = feature_io.ParseFromString(data)
    self.assertLen(back, 5)
    for got, want in zip(back, (locations, scales, descriptors, attention, orientations)):
      self.assertEqual(got.dtype, np.float64)  # DELF's reader returns float64.
      self.assertAllClose(got, want)
    proto = feature_io.ArraysToDelfFeatures(locations, scales, descriptors, attention)
    self.assertAllEqual(proto.feature[0].y, locations[0, 0])
    self.assertAllEqual(proto.feature[0].x, locations[0, 1])
    self.assertAllEqual(feature_io.DelfFeaturesToArrays(proto)[4], np.zeros([9]))

  def test_write_to_file_takes_path_first(self):
    locations, scales, descriptors, attention, _ = _random_features(4, 8)
    path = os.path.join(self.get_temp_dir(), "a.delg_local")
    feature_io.WriteToFile(path, locations, scales, descriptors, attention)
    other = os.path.join(self.get_temp_dir(), "b.delg_local")
    feature_io.write_to_file(other, locations, scales, descriptors, attention)
    with open(path, "rb") as f, open(other, "rb") as g:
      self.assertEqual(f.read(), g.read())
    got_locations, got_scales, got_descriptors, got_attention, got_orientations = (
      feature_io.ReadFromFile(path)
    )
    self.assertAllClose(got_locations, locations)
    self.assertAllClose(got_scales, scales)
    self.assertAllClose(got_descriptors, descriptors)
    self.assertAllClose(got_attention, attention)
    self.assertAllEqual(got_orientations, np.zeros([4]))

  def test_no_features_gives_five_empty_arrays(self):
    path = os.path.join(self.get_temp_dir(), "empty.delg_local")
    feature_io.WriteToFile(path, np.zeros([0, 2]), np.zeros([0]), np.zeros([0, 128]), np.zeros([0]))
    arrays = feature_io.ReadFromFile(path)
    self.assertLen(arrays, 5)
    for array in arrays:
      self.assertEqual(array.shape, (0,))
      self.assertEqual(array.dtype, np.float64)

  def test_inconsistent_shapes_and_bool_descriptors_raise(self):
    locations, scales, descriptors, attention, _ = _random_features(3, 4)
    with self.assertRaisesRegex(ValueError, "scales"):
      feature_io.ArraysToDelfFeatures(locations, scales[:2], descriptors, attention)
    with self.assertRaisesRegex(ValueError, "nsupported"):
      feature_io.SerializeToString(locations, scales, descriptors > 0, attention)


if __name__ == "__main__":
  tf.test.main()
