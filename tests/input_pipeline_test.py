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


if __name__ == "__main__":
  tf.test.main()
