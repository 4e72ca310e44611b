"""Tests for the per-class record counts of input_pipeline.scan_file / check_records.

The counts feed sub-center ArcFace's dynamic margins (heads.dynamic_margins);
every expected count below is counted by hand from the labels the test writes.
"""

import os

import numpy as np
import tensorflow as tf

from dolg_tf.data import gldv2, input_pipeline
from dolg_tf.model import heads


def _write(path, labels, junk_after=None):
  """A TFRecord file of label-only-relevant records (the image is never decoded)."""
  with tf.io.TFRecordWriter(path) as writer:
    for i, label in enumerate(labels):
      if i == junk_after:
        writer.write(b"\xff\xfe not a proto")
      writer.write(gldv2.make_example(f"id{i}", b"x", label, 1, 1).SerializeToString())


class ClassCountsTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def test_counts_of_one_file_by_hand(self):
    path = os.path.join(self.dir, "a")
    _write(path, [0, 2, 2, 4, 0, 2])
    scan = input_pipeline.scan_file(path, num_classes=6)
    # class 0: 2, class 1: none, class 2: 3, class 3: none, class 4: 1, class 5: none.
    self.assertAllEqual(scan.label_counts, [2, 0, 3, 0, 1, 0])
    self.assertEqual(scan.label_counts.dtype, np.int64)
    self.assertEqual(scan.num_records, 6)
    # Without num_classes: up to the largest label; NO_LABEL (-1) not counted.
    _write(path, [3, gldv2.NO_LABEL, 1, 3])
    self.assertAllEqual(input_pipeline.scan_file(path).label_counts, [0, 1, 0, 2])
    _write(path, [gldv2.NO_LABEL])
    self.assertAllEqual(input_pipeline.scan_file(path).label_counts, [])

  def test_counts_summed_over_files_and_scan_batches(self):
    # 1100 records span three scan batches of 512: labels i % 3 with class 3 empty.
    _write(os.path.join(self.dir, "train-0"), [i % 3 for i in range(1100)])
    _write(os.path.join(self.dir, "train-1"), [4, 4, 0])
    check = input_pipeline.check_records(os.path.join(self.dir, "train-*"), num_classes=5)
    # 1100 = 3 * 366 + 2: labels 0 and 1 get 367, label 2 gets 366.
    self.assertAllEqual(check.label_counts, [367 + 1, 367, 366, 0, 2])
    self.assertEqual(check.label_counts.sum(), check.num_records)
    self.assertAllEqual(check.files[1].label_counts, [1, 0, 0, 0, 2])
    # Held sparse per file: the classes present and their records.
    self.assertAllEqual(check.files[1].classes, [0, 4])
    self.assertAllEqual(check.files[1].class_records, [1, 2])
    self.assertEqual(check.files[1].label_range, 5)

  def test_corrupt_files_count_only_the_readable_records(self):
    junk = os.path.join(self.dir, "train-0")
    _write(junk, [1, 1, 2, 0], junk_after=2)  # records 0-1 read, then a non-Example
    truncated = os.path.join(self.dir, "train-1")
    _write(truncated, [0, 2, 2])
    with open(truncated, "rb") as f:
      data = f.read()
    with open(truncated, "wb") as f:
      f.write(data[:-3])  # the last record is cut
    with self.assertLogs(level="WARNING"):
      check = input_pipeline.check_records(
        os.path.join(self.dir, "train-*"), num_classes=3, skip_corrupt=True
      )
    self.assertLen(check.corrupt, 2)
    self.assertAllEqual(check.files[0].label_counts, [0, 2, 0])
    self.assertAllEqual(check.files[1].label_counts, [1, 0, 1])
    self.assertAllEqual(check.label_counts, [1, 2, 1])
    self.assertEqual(check.num_records, 4)

  def test_no_file_gives_empty_counts(self):
    self.assertAllEqual(input_pipeline.RecordsCheck([]).label_counts, [])

  def test_counts_set_the_subcenter_margins(self):
    # Class counts 16, 0, 1 (hand): n^-1/4 = 1/2, -, 1 -> margins 0.05, 0.5 (empty), 0.5.
    _write(os.path.join(self.dir, "train-0"), [0] * 16 + [2])
    check = input_pipeline.check_records(os.path.join(self.dir, "train-*"), num_classes=3)
    self.assertAllEqual(check.label_counts, [16, 0, 1])
    head = heads.SubCenterArcFace(3, scale=45.0, margin=0.05, margin_max=0.5, num_subcenters=3)
    head(tf.zeros([1, 8]))
    head.set_class_counts(check.label_counts)
    self.assertAllClose(head.class_margins, [0.05, 0.5, 0.5])


if __name__ == "__main__":
  tf.test.main()
