"""Tests for dolg_tf.data.input_pipeline (tf.data training and evaluation input)."""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.data import gldv2, input_pipeline


def _jpeg(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


class InputPipelineTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    # 5 images of different sizes, label i, in 2 shards.
    self.num = 5
    with gldv2.ShardedRecordWriter(os.path.join(self.dir, "train"), 2) as writer:
      for i in range(self.num):
        h, w = 30 + 4 * i, 44 - 3 * i
        image = rng.integers(0, 256, [h, w, 3], dtype=np.uint8)
        writer.write(gldv2.make_example(f"id{i}", _jpeg(image), i, h, w))
    self.pattern = os.path.join(self.dir, "train-*")
    # One image, to see augmentations change.
    self.gradient = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], [30, 1, 3])
    with gldv2.ShardedRecordWriter(os.path.join(self.dir, "single"), 1) as writer:
      writer.write(gldv2.make_example("g", _jpeg(self.gradient), 7, 30, 40))
    self.single = os.path.join(self.dir, "single-*")

  def _take(self, dataset, n):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(n)]

  def test_training_shapes_dtypes_and_range(self):
    dataset = input_pipeline.make_dataset(
      self.pattern, batch_size=4, image_size=16, training=True, seed=0
    )
    images_spec, labels_spec = dataset.element_spec
    self.assertEqual(images_spec.shape.as_list(), [4, 16, 16, 3])  # static: drop_remainder
    self.assertEqual(images_spec.dtype, tf.float32)
    self.assertEqual(labels_spec.dtype, tf.int32)
    batches = self._take(dataset, 5)  # repeats: more batches than one epoch
    self.assertLen(batches, 5)
    for images, labels in batches:
      self.assertEqual(images.shape, (4, 16, 16, 3))
      self.assertGreaterEqual(images.min(), 0.0)
      self.assertLessEqual(images.max(), 255.0)
      self.assertGreater(images.max(), 1.0)  # [0, 255], not [0, 1]
      self.assertTrue(set(labels.tolist()) <= set(range(self.num)))
    # Over 20 examples, every record is seen (shuffle + repeat).
    self.assertEqual(set(np.concatenate([b[1] for b in batches]).tolist()), set(range(self.num)))

  def test_same_seed_same_batches_other_seed_other_batches(self):
    def run(seed):
      return self._take(
        input_pipeline.make_dataset(self.pattern, 2, 16, training=True, seed=seed), 6
      )

    a, b, c = run(3), run(3), run(4)
    for (ia, la), (ib, lb) in zip(a, b):
      self.assertAllEqual(ia, ib)
      self.assertAllEqual(la, lb)
    self.assertFalse(all(np.array_equal(x[0], y[0]) for x, y in zip(a, c)))

  def test_augmentation_changes_across_epochs(self):
    dataset = input_pipeline.make_dataset(self.single, 1, 16, training=True, seed=0)
    views = [images[0] for images, _ in self._take(dataset, 6)]
    for i in range(1, len(views)):
      self.assertNotAllClose(views[0], views[i])
    # Crops of a left-to-right gradient: flipped ones decrease from left to right.
    slopes = {float(np.sign(v[:, -1].mean() - v[:, 0].mean())) for v in views}
    self.assertEqual(slopes, {-1.0, 1.0})

  def test_evaluation_is_one_ordered_pass(self):
    def run():
      return self._take(input_pipeline.make_dataset(self.pattern, 2, 16, training=False), 100)

    a, b = run(), run()
    self.assertEqual([len(labels) for _, labels in a], [2, 2, 1])  # no drop_remainder
    # Interleaved round-robin over the 2 shards: record order 0, 1, 2, 3, 4.
    self.assertEqual(np.concatenate([labels for _, labels in a]).tolist(), [0, 1, 2, 3, 4])
    for (ia, _), (ib, _) in zip(a, b):
      self.assertAllEqual(ia, ib)

  def test_evaluation_center_crop(self):
    def first_row(center_crop):
      dataset = input_pipeline.make_dataset(
        self.single, 1, 30, training=False, center_crop=center_crop
      )
      images, _ = self._take(dataset, 1)[0]
      return images[0, 0, :, 0]

    cropped, whole = first_row(True), first_row(False)
    # The central 30x30 square of the 30x40 gradient spans columns 5..34 only.
    self.assertGreater(cropped.min(), whole.min() + 15)
    self.assertLess(cropped.max(), whole.max() - 15)

  def test_drop_remainder(self):
    kept = input_pipeline.make_dataset(self.pattern, 2, 8, training=False, drop_remainder=True)
    self.assertEqual(kept.element_spec[0].shape.as_list(), [2, 8, 8, 3])
    self.assertEqual([len(labels) for _, labels in self._take(kept, 100)], [2, 2])
    loose = input_pipeline.make_dataset(self.pattern, 2, 8, training=False)
    self.assertIsNone(loose.element_spec[0].shape[0])

  def test_input_context_shards_between_pipelines(self):
    labels = []
    for pipeline in range(2):
      context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
      dataset = input_pipeline.make_dataset(
        self.pattern, 8, 8, training=False, input_context=context
      )
      labels.append(np.concatenate([lab for _, lab in self._take(dataset, 10)]).tolist())
    self.assertEmpty(set(labels[0]) & set(labels[1]))
    self.assertEqual(sorted(labels[0] + labels[1]), list(range(self.num)))

  def test_missing_files(self):
    with self.assertRaisesRegex(FileNotFoundError, "nothing-here"):
      input_pipeline.make_dataset(os.path.join(self.dir, "nothing-here*"), 2, 8, training=True)


class CheckRecordsTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    image = _jpeg(np.full([8, 8, 3], 128, np.uint8))
    with gldv2.ShardedRecordWriter(os.path.join(self.dir, "train"), 2) as writer:
      for i in range(8):
        writer.write(gldv2.make_example(f"id{i}", image, i % 4, 8, 8))
    self.pattern = os.path.join(self.dir, "train-*")
    self.shards = sorted(tf.io.gfile.glob(self.pattern))

  def _rewrite(self, path, edit):
    with open(path, "rb") as f:
      data = bytearray(f.read())
    data = edit(data)
    with open(path, "wb") as f:
      f.write(bytes(data))
    return len(data)

  def test_intact_files_counted_with_label_range(self):
    check = input_pipeline.check_records(self.pattern, num_classes=4)
    self.assertEqual(check.num_records, 8)
    self.assertEmpty(check.corrupt)
    self.assertEqual([(f.min_label, f.max_label) for f in check.files], [(0, 2), (1, 3)])

  def test_labels_outside_the_classes_name_the_file_and_record(self):
    with self.assertRaisesRegex(
      input_pipeline.DataError,
      f"{self.shards[1]}: record 1 has label 3, outside \\[0, 3\\)",
    ):
      input_pipeline.check_records(self.pattern, num_classes=3)
    with tf.io.TFRecordWriter(os.path.join(self.dir, "unlabelled")) as writer:
      writer.write(gldv2.make_example("u", b"x", gldv2.NO_LABEL, 1, 1).SerializeToString())
    with self.assertRaisesRegex(input_pipeline.DataError, "record 0 has label -1"):
      input_pipeline.check_records(os.path.join(self.dir, "unlabelled"), num_classes=3)

  def test_truncated_and_bit_flipped_files(self):
    size = self._rewrite(self.shards[0], lambda data: data[:-3])
    scan = input_pipeline.scan_file(self.shards[0])
    self.assertEqual(scan.num_records, 3)
    self.assertRegex(scan.corrupt, f"record 3 at byte \\d+ of {size} is truncated or corrupt")

    def flip(data):
      data[len(data) // 3] ^= 0x10
      return data

    self._rewrite(self.shards[1], flip)
    scan = input_pipeline.scan_file(self.shards[1])
    self.assertLess(scan.num_records, 4)
    self.assertIsNotNone(scan.corrupt)
    with self.assertRaisesRegex(
      input_pipeline.DataError,
      f"^{self.shards[0]}: record 3 .*set data.skip_corrupt_records=true",
    ):
      input_pipeline.check_records(self.pattern, num_classes=4)
    with self.assertLogs(level="WARNING") as logs:
      check = input_pipeline.check_records(self.pattern, num_classes=4, skip_corrupt=True)
    self.assertLen(check.corrupt, 2)
    self.assertIn("2 of 2 files are corrupt", logs.output[-1])
    dataset = input_pipeline.make_dataset(self.pattern, 1, 8, training=False, skip_corrupt=True)
    self.assertLen(list(dataset), check.num_records)
    with self.assertRaises(tf.errors.DataLossError):
      list(input_pipeline.make_dataset(self.pattern, 1, 8, training=False))

  def test_records_that_are_not_examples_and_empty_files(self):
    junk = os.path.join(self.dir, "junk")
    with tf.io.TFRecordWriter(junk) as writer:
      writer.write(gldv2.make_example("a", b"x", 0, 1, 1).SerializeToString())
      writer.write(b"\xff\xfe not a proto")
    scan = input_pipeline.scan_file(junk)
    self.assertEqual(scan.num_records, 1)
    self.assertRegex(scan.corrupt, "record 1 .*not a tf.train.Example")
    empty = os.path.join(self.dir, "empty")
    open(empty, "wb").close()
    with self.assertRaisesRegex(input_pipeline.DataError, "data.x: the 1 file.* hold no record"):
      input_pipeline.check_records(empty, 4, field="data.x")
    with self.assertRaisesRegex(FileNotFoundError, "data.x matches no file: '.*/none-\\*'"):
      input_pipeline.check_records(os.path.join(self.dir, "none-*"), 4, field="data.x")

  def test_image_that_does_not_decode_names_its_id_or_is_skipped(self):
    path = os.path.join(self.dir, "mixed")
    image = _jpeg(np.zeros([8, 8, 3], np.uint8))
    with tf.io.TFRecordWriter(path) as writer:
      for i, encoded in enumerate((image, b"GARBAGE!", image)):
        writer.write(gldv2.make_example(f"m{i}", encoded, i, 8, 8).SerializeToString())
    with self.assertRaises(tf.errors.InvalidArgumentError) as raised:
      list(input_pipeline.make_dataset(path, 1, 8, training=False))
    self.assertEqual(
      input_pipeline.image_error(raised.exception),
      f"record with image/id m1: {input_pipeline.NOT_AN_IMAGE}",
    )
    self.assertIsNone(input_pipeline.image_error(ValueError("x")))
    dataset = input_pipeline.make_dataset(path, 1, 8, training=False, skip_corrupt=True)
    self.assertEqual([int(labels[0]) for _, labels in dataset], [0, 2])


if __name__ == "__main__":
  tf.test.main()
