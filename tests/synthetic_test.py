"""Tests for dolg_tf.data.synthetic (procedural landmarks, training set, benchmark)."""

import csv
import dataclasses
import json
import os
import pickle

import cv2
import numpy as np
import tensorflow as tf
from absl import flags
from PIL import Image

from dolg_tf.data import gldv2, synthetic, synthetic_benchmark, synthetic_scenes


def _thumbnail(image: np.ndarray) -> np.ndarray:
  """Zero-mean, unit-norm 16x16 grayscale thumbnail (for normalised cross-correlation)."""
  gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
  thumb = cv2.resize(gray, (16, 16), interpolation=cv2.INTER_AREA).ravel()
  thumb -= thumb.mean()
  return thumb / (np.linalg.norm(thumb) + 1e-6)


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
  """Leave-one-out nearest class-centroid accuracy."""
  correct = 0
  for i in range(len(labels)):
    keep = np.arange(len(labels)) != i
    centroids = np.stack([features[keep & (labels == c)].mean(0) for c in np.unique(labels)])
    correct += int(np.argmin(((centroids - features[i]) ** 2).sum(1)) == labels[i])
  return correct / len(labels)


class RenderTest(tf.test.TestCase):
  def test_deterministic_with_a_seed(self):
    a, b = synthetic_scenes.make_scenes(3, seed=5), synthetic_scenes.make_scenes(3, seed=5)
    self.assertEqual(a, b)
    self.assertNotEqual(a, synthetic_scenes.make_scenes(3, seed=6))
    # Scene i does not depend on how many scenes are made.
    self.assertEqual(synthetic_scenes.make_scenes(5, seed=5)[2], a[2])
    view1 = synthetic_scenes.render_view(a[0], np.random.default_rng(1), 40)
    view2 = synthetic_scenes.render_view(b[0], np.random.default_rng(1), 40)
    self.assertEqual(view1.dtype, np.uint8)
    self.assertEqual(view1.shape, (40, 40, 3))
    self.assertAllEqual(view1, view2)
    self.assertNotAllEqual(view1, synthetic_scenes.render_view(a[0], np.random.default_rng(2), 40))

  def test_views_share_content_but_not_mean_colour(self):
    num_classes, views = 8, 10
    scenes = synthetic_scenes.make_scenes(num_classes, seed=0)
    labels = np.repeat(np.arange(num_classes), views)

    def render(params):
      return [
        synthetic_scenes.render_view(
          scene, np.random.default_rng([0, scene.class_id, v]), 64, params
        )
        for scene in scenes
        for v in range(views)
      ]

    images = render(synthetic_scenes.TRAIN_VIEW)
    thumbs = np.stack([_thumbnail(im) for im in images])
    ncc = thumbs @ thumbs.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    different = labels[:, None] != labels[None, :]
    self.assertGreater(ncc[same].mean(), ncc[different].mean() + 0.08)

    # Mean colour is a poor classifier (chance: 1/8)...
    mean_colour = np.stack([im.reshape(-1, 3).mean(0) for im in images])
    self.assertLess(_nearest_centroid_accuracy(mean_colour, labels), 0.4)
    # ...whereas without the colour jitter it would be a good one: the
    # measure can see a colour shortcut.
    no_jitter = dataclasses.replace(
      synthetic_scenes.TRAIN_VIEW,
      max_hue_shift_deg=0.0,
      saturation_range=(1.0, 1.0),
      brightness_range=(1.0, 1.0),
      contrast_range=(1.0, 1.0),
      max_channel_gain=0.0,
      grayscale_prob=0.0,
      max_shading=0.0,
    )
    plain = np.stack([im.reshape(-1, 3).mean(0) for im in render(no_jitter)])
    self.assertGreater(_nearest_centroid_accuracy(plain, labels), 0.5)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "num_classes"):
      synthetic_scenes.make_scenes(0, seed=0)
    with self.assertRaisesRegex(ValueError, "size"):
      synthetic_scenes.render_view(synthetic_scenes.make_scene(0, 0), np.random.default_rng(0), 4)


class TrainingSetTest(tf.test.TestCase):
  def test_records_in_gldv2_layout(self):
    out = self.create_tempdir().full_path
    info = synthetic.write_training_set(
      out, num_classes=3, views_per_class=5, image_size=32, num_shards=2, seed=0
    )
    self.assertEqual((info.num_train, info.num_validation, info.num_classes), (12, 3, 3))
    self.assertLen(tf.io.gfile.glob(info.train_pattern), 2)
    self.assertLen(tf.io.gfile.glob(info.validation_pattern), 2)
    labels = {}
    for split, pattern in (("train", info.train_pattern), ("validation", info.validation_pattern)):
      files = sorted(tf.io.gfile.glob(pattern))
      for record in tf.data.TFRecordDataset(files).map(gldv2.parse_example):
        self.assertEqual(record["image"].shape, (32, 32, 3))
        labels.setdefault(split, []).append(int(record["label"]))
    self.assertEqual(sorted(labels["train"]), [0] * 4 + [1] * 4 + [2] * 4)
    self.assertEqual(sorted(labels["validation"]), [0, 1, 2])
    with open(os.path.join(out, synthetic.INFO_FILENAME)) as f:
      self.assertEqual(json.load(f)["info"]["num_train"], 12)

    # Same seed, same bytes.
    again = synthetic.write_training_set(
      self.create_tempdir().full_path, num_classes=3, views_per_class=5, image_size=32, seed=0
    )
    for a, b in zip(info.train_files, again.train_files):
      with open(a, "rb") as fa, open(b, "rb") as fb:
        self.assertEqual(fa.read(), fb.read())

  def test_ensure_demo_data_writes_once(self):
    out = self.create_tempdir().full_path
    kwargs = dict(num_classes=2, views_per_class=3, image_size=16, seed=0)
    first = synthetic.ensure_demo_data(out, **kwargs)
    self.assertEqual(first[2], 2)
    stamp = os.path.getmtime(os.path.join(out, synthetic.INFO_FILENAME))
    os.utime(os.path.join(out, synthetic.INFO_FILENAME), (stamp - 100, stamp - 100))
    self.assertEqual(synthetic.ensure_demo_data(out, **kwargs), first)
    self.assertEqual(os.path.getmtime(os.path.join(out, synthetic.INFO_FILENAME)), stamp - 100)
    # Other parameters: written again.
    third = synthetic.ensure_demo_data(out, **{**kwargs, "num_classes": 3})
    self.assertEqual(third[2], 3)


class BenchmarkTest(tf.test.TestCase):
  def test_ground_truth_structure(self):
    out = self.create_tempdir().full_path
    info = synthetic_benchmark.write_retrieval_benchmark(
      out,
      num_classes=3,
      queries_per_class=2,
      db_per_class=5,
      image_size=32,
      seed=0,
      num_distractor_classes=2,
    )
    self.assertEqual((info.num_queries, info.num_db), (6, 25))
    self.assertEqual(os.path.basename(info.gnd_path), "gnd_synthetic.pkl")
    with open(info.gnd_path, "rb") as f:
      gnd = pickle.load(f)
    self.assertCountEqual(gnd, ["imlist", "qimlist", "gnd"])
    self.assertLen(gnd["imlist"], 25)
    self.assertLen(gnd["qimlist"], 6)
    self.assertLen(gnd["gnd"], 6)
    for name in gnd["imlist"] + gnd["qimlist"]:
      self.assertNotIn(".", name)  # names without extension
      with Image.open(os.path.join(info.images_dir, name + ".jpg")) as image:
        self.assertEqual(image.size, (32, 32))
    with open(info.labels_path, newline="") as f:
      rows = {row["name"]: row for row in csv.DictReader(f)}
    db_class = [int(rows[name]["class"]) for name in gnd["imlist"]]
    db_kind = [rows[name]["kind"] for name in gnd["imlist"]]
    self.assertEqual(db_kind.count("distractor"), 10)
    self.assertEqual(sorted(set(db_class)), [0, 1, 2, 3, 4])
    for q, entry in zip(gnd["qimlist"], gnd["gnd"]):
      query_class = int(rows[q]["class"])
      self.assertEqual(entry["bbx"], [0.0, 0.0, 32.0, 32.0])
      seen = set()
      for kind in ("easy", "hard", "junk"):
        indices = entry[kind]
        self.assertNotEmpty(indices)
        self.assertTrue(all(type(i) is int and 0 <= i < 25 for i in indices))
        self.assertTrue(all(db_class[i] == query_class and db_kind[i] == kind for i in indices))
        self.assertEmpty(seen & set(indices))
        seen |= set(indices)
      # Every database view of the query's class is in exactly one list.
      self.assertEqual(seen, {i for i, c in enumerate(db_class) if c == query_class})

  def test_binary_writes_both(self):
    flag_values = flags.FlagValues()
    synthetic.define_flags(flag_values)
    out = self.create_tempdir().full_path
    flag_values(
      [
        "synthetic",
        f"--output_dir={out}",
        "--num_classes=2",
        "--views_per_class=3",
        "--image_size=16",
        "--db_per_class=3",
        "--queries_per_class=1",
      ]
    )
    self.assertEqual(synthetic.run_with_flags(flag_values), 0)
    self.assertLen(tf.io.gfile.glob(os.path.join(out, "tfrecords", "train-*")), 2)
    self.assertTrue(os.path.isfile(os.path.join(out, "benchmark", "gnd_synthetic.pkl")))
    with open(os.path.join(out, "benchmark", "gnd_synthetic.pkl"), "rb") as f:
      gnd = pickle.load(f)
    self.assertLen(gnd["imlist"], (2 + 2) * 3)  # max(2, 2 // 2) distractor classes


if __name__ == "__main__":
  tf.test.main()
