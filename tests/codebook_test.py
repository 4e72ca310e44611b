"""Codebook training, saving and loading (retrieval/codebook.py) and dolg-train-codebook."""

import json
import os

import numpy as np
import tensorflow as tf

from dolg_tf.io import aggregation_config_io, feature_io
from dolg_tf.retrieval import aggregation
from dolg_tf.retrieval import codebook as codebook_lib
from tests import testutil

MODULE = "dolg_tf.retrieval.train_codebook"
CENTROIDS = np.array([[0.5, 0.5], [0.0, 0.0], [1.0, 0.0], [-0.5, -0.5], [0.0, 1.0]], np.float32)


def _blobs(per_blob=40, seed=0):
  """Three well-separated 2-D blobs around (0, 0), (10, 0), (0, 10)."""
  rng = np.random.default_rng(seed)
  centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
  rows = [c + 0.1 * rng.normal(size=[per_blob, 2]) for c in centres]
  return np.concatenate(rows).astype(np.float32), centres


class SaveLoadTest(tf.test.TestCase):
  def test_checkpoint_restores_the_way_delf_does(self):
    written = codebook_lib.save_codebook(self.get_temp_dir(), CENTROIDS, {"seed": 3})
    # DELF's feature_aggregation_extractor: a zero variable named "clusters",
    # tf.train.Checkpoint(codebook=...).restore(codebook_path).
    variable = tf.Variable(tf.zeros([5, 2], tf.float32), name="clusters")
    tf.train.Checkpoint(codebook=variable).restore(written["checkpoint"])
    self.assertAllEqual(variable.numpy(), CENTROIDS)
    self.assertIn(codebook_lib.CHECKPOINT_KEY, dict(tf.train.list_variables(written["checkpoint"])))
    with open(written["config"]) as f:
      config = json.load(f)
    self.assertEqual((config["codebook_size"], config["feature_dimensionality"]), (5, 2))
    self.assertEqual(config["seed"], 3)

  def test_load_every_form(self):
    folder = self.get_temp_dir()
    written = codebook_lib.save_codebook(folder, CENTROIDS, {})
    for path in (written["checkpoint"], written["npy"], folder):
      self.assertAllEqual(codebook_lib.load_codebook(path, 5, 2), CENTROIDS)

  def test_legacy_tf1_kmeans_checkpoint(self):
    prefix = os.path.join(self.get_temp_dir(), "legacy", "model.ckpt")
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
      variable = tf.compat.v1.get_variable("clusters", initializer=tf.constant(CENTROIDS))
      sess.run(variable.initializer)
      tf.compat.v1.train.Saver([variable]).save(sess, prefix)
    self.assertAllEqual(codebook_lib.load_codebook(prefix), CENTROIDS)
    self.assertAllEqual(codebook_lib.load_codebook(os.path.dirname(prefix)), CENTROIDS)

  def test_one_line_errors(self):
    folder = self.get_temp_dir()
    path = os.path.join(folder, "c.npy")
    np.save(path, CENTROIDS)
    with self.assertRaisesRegex(ValueError, r"c\.npy: codebook is \[5, 2\].*codebook_size is 6"):
      codebook_lib.load_codebook(path, 6, 2)
    with self.assertRaisesRegex(ValueError, r"feature_dimensionality is 3"):
      codebook_lib.load_codebook(path, 5, 3)
    bad = os.path.join(folder, "bad.npy")
    with open(bad, "wb") as f:
      f.write(b"not npy")
    with self.assertRaisesRegex(ValueError, r"bad\.npy: not a readable \.npy codebook"):
      codebook_lib.load_codebook(bad)
    with self.assertRaisesRegex(FileNotFoundError, "nowhere: codebook not found"):
      codebook_lib.load_codebook(os.path.join(folder, "nowhere"))
    with self.assertRaisesRegex(ValueError, "folder holds no codebook.npy"):
      codebook_lib.load_codebook(os.path.join(folder))
    np.save(path, np.ones([3], np.float32))
    with self.assertRaisesRegex(ValueError, r"float \[K, D\] matrix"):
      codebook_lib.load_codebook(path)


class TrainingTest(tf.test.TestCase):
  def test_kmeans_finds_the_blobs_deterministically(self):
    rows, centres = _blobs()
    centroids, objective = codebook_lib.train_kmeans(rows, 3, iterations=10, seed=1, redo=8)
    order = np.argsort(centroids[:, 0] + 100 * centroids[:, 1])
    self.assertAllClose(centroids[order], centres, atol=0.1)
    self.assertLess(objective / len(rows), 0.05)
    again, _ = codebook_lib.train_kmeans(rows, 3, iterations=10, seed=1, redo=8)
    self.assertAllEqual(again, centroids)
    with self.assertRaisesRegex(ValueError, "2 descriptors for 3 visual words"):
      codebook_lib.train_kmeans(rows[:2], 3)

  def test_sample_is_bounded_uniform_and_deterministic(self):
    blocks = {f"f{i}": np.full([10, 2], i, np.float32) for i in range(5)}
    blocks["bad"] = OSError("bad: corrupt")

    def read(path):
      if isinstance(blocks[path], Exception):
        raise blocks[path]
      return blocks[path]

    paths = ["f0", "f1", "bad", "f2", "f3", "f4"]
    sample, stats = codebook_lib.sample_descriptors(paths, 12, seed=5, read=read)
    self.assertEqual(sample.shape, (12, 2))
    self.assertEqual(stats["descriptors_seen"], 50)
    self.assertEqual(stats["files_failed"], [("bad", "bad: corrupt")])
    again, _ = codebook_lib.sample_descriptors(paths, 12, seed=5, read=read)
    self.assertAllEqual(again, sample)
    every, _ = codebook_lib.sample_descriptors(paths, 100, seed=5, read=read)
    self.assertAllEqual(every, np.concatenate([blocks[p] for p in paths if p != "bad"]))
    blocks["f4"] = np.ones([3, 4], np.float32)
    with self.assertRaisesRegex(ValueError, "f4: descriptors of dimension 4, earlier files had 2"):
      codebook_lib.sample_descriptors(paths, 12, read=read)


class TrainCodebookCommandTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.features = os.path.join(self.dir, "features")
    os.makedirs(self.features, exist_ok=True)
    rows, _ = _blobs(per_blob=20)
    for i, part in enumerate(np.split(rows, 6)):
      n = len(part)
      path = os.path.join(self.features, f"img{i}" + (".delf" if i % 2 else ".delg_local"))
      feature_io.write_to_file(path, np.zeros([n, 2]), np.ones(n), part, np.ones(n))
    with open(os.path.join(self.features, "img9.delf"), "wb") as f:
      f.write(b"\x0a\xff\xff")  # corrupt: skipped and counted

  def _run(self, *args):
    out = os.path.join(self.dir, "cb")
    return testutil.run_module(
      MODULE, f"--features_dir={self.features}", f"--output_dir={out}", *args
    ), out

  def test_trains_a_codebook_dolg_aggregate_can_use(self):
    result, out = self._run("--codebook_size=3", "--iterations=10", "--seed=2")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn(
      "codebook 3 x 2 from 60 descriptors (60 seen in 7 files, 1 unreadable)", result.stdout
    )
    config_path = os.path.join(out, "aggregation_config.pbtxt")
    config = aggregation_config_io.load_config(config_path)
    aggregator = aggregation.from_config(config, config_path)  # the checkpoint, DELF's layout
    self.assertAllEqual(aggregator.codebook, np.load(os.path.join(out, "codebook.npy")))
    with open(os.path.join(out, "codebook_config.json")) as f:
      record = json.load(f)
    self.assertEqual((record["files_failed"], record["descriptors_used"]), (1, 60))
    result, _ = self._run("--codebook_size=3")
    testutil.assert_one_line_error(self, "train_codebook", result, ".*already holds a codebook")

  def test_image_list_and_sample_bound(self):
    names = os.path.join(self.dir, "names.txt")
    with open(names, "w") as f:
      f.write("# index\nimg0\nimg1\nimg_missing\n")
    result, out = self._run(f"--image_list={names}", "--codebook_size=2", "--max_descriptors=15")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("1 listed images have no local feature file (first: img_missing)", result.stdout)
    self.assertIn("codebook 2 x 2 from 15 descriptors (20 seen in 2 files", result.stdout)

  def test_errors(self):
    result, _ = self._run("--codebook_size=0")
    testutil.assert_one_line_error(
      self, "train_codebook", result, "--codebook_size must be > 0, got 0"
    )
    result, _ = self._run("--codebook_size=many")
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn("Traceback", result.stderr)
    result, _ = self._run("--codebook_size=500")  # known after sampling (its lines come first)
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn("Traceback", result.stderr)
    self.assertRegex(
      result.stderr.strip().splitlines()[-1],
      "^train_codebook: error: 60 descriptors for 500 visual words",
    )
    result, _ = self._run("--suffixes=.nothing")
    testutil.assert_one_line_error(
      self, "train_codebook", result, r"no local feature files \(\.nothing\)"
    )


if __name__ == "__main__":
  tf.test.main()
