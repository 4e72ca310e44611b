"""Tests for dolg_tf.data.gldv2 (GLDv2 TFRecord layout, sharded writer, parsing)."""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.data import gldv2


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


class NumClassesTest(tf.test.TestCase):
  def test_known_versions(self):
    self.assertEqual(gldv2.num_classes("gld_v1"), 14951)
    self.assertEqual(gldv2.num_classes("gld_v2"), 203094)
    self.assertEqual(gldv2.num_classes("gld_v2_clean"), 81313)

  def test_explicit_count_wins_for_any_version(self):
    self.assertEqual(gldv2.num_classes("gld_v2_clean", 10), 10)
    self.assertEqual(gldv2.num_classes("synthetic", 7), 7)
    self.assertEqual(gldv2.num_classes("gld_v1", 0), 14951)  # 0 means "not given"

  def test_unknown_version_error_names_it_and_the_known_ones(self):
    with self.assertRaisesRegex(ValueError, r"unknown dataset_version 'gld_v3'.*gld_v2_clean"):
      gldv2.num_classes("gld_v3")
    with self.assertRaisesRegex(ValueError, "positive"):
      gldv2.num_classes("gld_v2", -3)


class ExampleTest(tf.test.TestCase):
  def test_features_follow_the_delf_layout(self):
    example = gldv2.make_example("abc123", b"\xff\xd8jpeg", 5, height=20, width=30)
    feature = example.features.feature
    self.assertEqual(feature["image/height"].int64_list.value, [20])
    self.assertEqual(feature["image/width"].int64_list.value, [30])
    self.assertEqual(feature["image/channels"].int64_list.value, [3])
    self.assertEqual(feature["image/class/label"].int64_list.value, [5])
    self.assertEqual(feature["image/format"].bytes_list.value, [b"JPEG"])
    self.assertEqual(feature["image/id"].bytes_list.value, [b"abc123"])
    self.assertEqual(feature["image/filename"].bytes_list.value, [b"abc123.jpg"])
    self.assertEqual(feature["image/encoded"].bytes_list.value, [b"\xff\xd8jpeg"])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "id"):
      gldv2.make_example("", b"x", 0, 1, 1)
    with self.assertRaisesRegex(ValueError, "abc: image/encoded is empty"):
      gldv2.make_example("abc", b"", 0, 1, 1)
    with self.assertRaisesRegex(ValueError, "abc: bad size"):
      gldv2.make_example("abc", b"x", 0, 0, 1)


class ShardedWriterAndParseTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    # Smooth images survive JPEG with a small error.
    base = np.linspace(0, 255, 24 * 16 * 3).reshape(24, 16, 3)
    self.images = [np.clip(base + 40 * i, 0, 255).astype(np.uint8) for i in range(7)]
    self.labels = [int(x) for x in rng.integers(0, 4, 7)]

  def _write(self, prefix, num_shards):
    with gldv2.ShardedRecordWriter(prefix, num_shards) as writer:
      for i, (image, label) in enumerate(zip(self.images, self.labels)):
        writer.write(gldv2.make_example(f"id{i}", _jpeg(image), label, 24, 16))
    return writer

  def test_round_trip_ids_labels_and_pixels(self):
    prefix = os.path.join(self.dir, "sub", "train")  # the folder is created
    writer = self._write(prefix, 3)
    self.assertEqual(
      sorted(os.listdir(os.path.dirname(prefix))),
      ["train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003"],
    )
    self.assertEqual(writer.counts, [3, 2, 2])  # round-robin
    self.assertEqual(writer.num_written, 7)
    files = tf.io.gfile.glob(gldv2.shard_pattern(prefix))
    self.assertLen(files, 3)
    parsed = {}
    for record in tf.data.TFRecordDataset(sorted(files)).map(gldv2.parse_example):
      parsed[record["id"].numpy().decode()] = record
    self.assertCountEqual(parsed, [f"id{i}" for i in range(7)])
    for i, image in enumerate(self.images):
      record = parsed[f"id{i}"]
      self.assertEqual(record["label"].dtype, tf.int64)
      self.assertEqual(int(record["label"]), self.labels[i])
      self.assertEqual(record["image"].dtype, tf.uint8)
      self.assertEqual(record["image"].shape, (24, 16, 3))
      self.assertEqual((int(record["height"]), int(record["width"])), (24, 16))
      error = np.abs(record["image"].numpy().astype(int) - image.astype(int)).mean()
      self.assertLess(error, 3.0)

  def test_parse_without_decode_and_png_bytes(self):
    image = self.images[1]
    example = gldv2.make_example("png", _png(image), 2, 24, 16)
    record = gldv2.parse_example(tf.constant(example.SerializeToString()), decode=False)
    self.assertNotIn("image", record)
    decoded = gldv2.decode_image(record["encoded"])
    self.assertAllEqual(decoded, image)  # PNG is lossless

  def test_missing_label_reads_as_no_label(self):
    example = gldv2.make_example("x", _png(self.images[0]), 0, 24, 16)
    del example.features.feature["image/class/label"]
    record = gldv2.parse_example(tf.constant(example.SerializeToString()))
    self.assertEqual(int(record["label"]), gldv2.NO_LABEL)

  def test_shards_appear_only_on_close_and_abort_leaves_nothing(self):
    prefix = os.path.join(self.dir, "val")
    writer = gldv2.ShardedRecordWriter(prefix, 2)
    writer.write(gldv2.make_example("a", _png(self.images[0]), 0, 24, 16))
    self.assertEqual(tf.io.gfile.glob(prefix + "-*"), [])  # only hidden temporaries
    writer.close()
    self.assertLen(tf.io.gfile.glob(prefix + "-*"), 2)  # the empty shard too
    self.assertEqual(sum(1 for _ in tf.data.TFRecordDataset(writer.paths)), 1)

    with self.assertRaises(RuntimeError):
      with gldv2.ShardedRecordWriter(os.path.join(self.dir, "broken"), 2) as w:
        w.write(b"record")
        raise RuntimeError("job died")
    self.assertEqual(sorted(os.listdir(self.dir)), ["val-00000-of-00002", "val-00001-of-00002"])

  def test_writer_rejects_bad_shard_count_and_writes_after_close(self):
    with self.assertRaisesRegex(ValueError, "num_shards"):
      gldv2.ShardedRecordWriter(os.path.join(self.dir, "x"), 0)
    writer = gldv2.ShardedRecordWriter(os.path.join(self.dir, "y"), 1)
    writer.close()
    with self.assertRaisesRegex(ValueError, "closed"):
      writer.write(b"r")


if __name__ == "__main__":
  tf.test.main()
