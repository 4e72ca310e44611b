"""Tests for the read path of dolg_tf.io.descriptor_reading: refusals that name the file."""

import os
import re

import numpy as np
import tensorflow as tf

from dolg_tf.io import datum_io, descriptor_files, descriptor_reading

SUFFIX = descriptor_files.DEFAULT_SUFFIX


def _shard(path, ids, descriptors):
  np.savez(path, ids=np.array(ids, dtype=str), descriptors=np.asarray(descriptors, np.float32))
  return path


class DescriptorReadingTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def _per_image(self, names, vectors):
    for name, vector in zip(names, vectors):
      datum_io.write_to_file(os.path.join(self.dir, name + SUFFIX), np.asarray(vector, np.float32))

  def test_non_finite_per_image_descriptor_names_the_file(self):
    self._per_image(["a", "b"], [[1.0, 0.0, 0.0], [0.0, np.nan, np.inf]])
    path = os.path.join(self.dir, "b" + SUFFIX)
    message = r": non-finite descriptor \(2 of 3 values are NaN or inf\)$"
    with self.assertRaisesRegex(ValueError, "^" + re.escape(path) + message):
      descriptor_reading.read_descriptors(self.dir)
    ids, matrix = descriptor_reading.read_descriptors(self.dir, ids=["a"])  # b is not read
    self.assertEqual(ids, ["a"])
    self.assertAllEqual(matrix, [[1.0, 0.0, 0.0]])

  def test_non_finite_shard_row_names_the_shard_and_the_image(self):
    _shard(os.path.join(self.dir, "descriptors-00000.npz"), ["a", "b"], np.ones([2, 4]))
    rows = np.ones([3, 4])
    rows[1, 2] = np.inf
    rows[2, 0] = np.nan
    bad = _shard(os.path.join(self.dir, "descriptors-00001.npz"), ["c", "d", "e"], rows)
    with self.assertRaisesRegex(
      ValueError,
      "^" + re.escape(bad) + r": non-finite descriptor \(NaN or inf\) for image d \(2 of 3 rows\)$",
    ):
      descriptor_reading.read_descriptors(self.dir)

  def test_missing_ids_are_counted_with_the_first_few_named(self):
    self._per_image(["a", "b"], np.eye(2))
    wanted = ["a", "m1", "b", "m2", "m3", "m4", "m5", "m6"]
    with self.assertRaises(descriptor_reading.MissingDescriptorsError) as raised:
      descriptor_reading.read_descriptors(self.dir, ids=wanted)
    self.assertEqual(
      str(raised.exception), f"6 of 8 descriptors missing in {self.dir}: m1, m2, m3, m4, m5, ..."
    )
    self.assertEqual(raised.exception.missing, ["m1", "m2", "m3", "m4", "m5", "m6"])
    self.assertIsInstance(raised.exception, KeyError)  # as before
    self.assertIsInstance(raised.exception, ValueError)
    shards = self.create_tempdir().full_path
    _shard(os.path.join(shards, "descriptors-00000.npz"), ["a"], np.ones([1, 2]))
    with self.assertRaisesRegex(KeyError, f"^1 of 2 descriptors missing in {shards}: z$"):
      descriptor_reading.read_descriptors(shards, ids=["a", "z"])

  def test_list_ids_and_descriptor_dim_read_at_most_one_descriptor(self):
    self._per_image(["b", "a"], np.eye(2, 5))
    datum_io.write_to_file(os.path.join(self.dir, "c" + SUFFIX), np.array([np.nan], np.float32))
    self.assertEqual(descriptor_reading.list_ids(self.dir), ["a", "b", "c"])
    self.assertEqual(descriptor_reading.descriptor_dim(self.dir, ids=["z", "b"]), 5)
    self.assertIsNone(descriptor_reading.descriptor_dim(self.dir, ids=["z"]))
    shards = self.create_tempdir().full_path
    _shard(os.path.join(shards, "descriptors-00000.npz"), ["x", "y"], np.full([2, 7], np.nan))
    self.assertEqual(descriptor_reading.list_ids(shards), ["x", "y"])
    self.assertEqual(descriptor_reading.descriptor_dim(os.path.join(shards, "*.npz")), 7)
    with self.assertRaisesRegex(FileNotFoundError, "nothing-here: no descriptor files found"):
      descriptor_reading.list_ids(os.path.join(self.dir, "nothing-here"))

  def test_truncated_files_are_named(self):
    self._per_image(["a"], [np.arange(16)])
    path = os.path.join(self.dir, "a" + SUFFIX)
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[: len(data) // 2])
    with self.assertRaisesRegex(OSError, "^" + re.escape(path) + ": corrupt DatumProto file"):
      descriptor_reading.read_descriptors(self.dir)
    shards = self.create_tempdir().full_path
    shard = _shard(os.path.join(shards, "descriptors-00000.npz"), ["x"], np.ones([1, 8]))
    with open(shard, "rb") as f:
      data = f.read()
    with open(shard, "wb") as f:
      f.write(data[:-20])
    with self.assertRaisesRegex(OSError, "^" + re.escape(shard) + ": not a descriptor shard"):
      descriptor_reading.read_descriptors(shards)


if __name__ == "__main__":
  tf.test.main()
