"""Tests for dolg_tf.retrieval.recognition and the dolg-recognize command on hand-made data."""

import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.io import datum_io, descriptor_files, feature_io
from dolg_tf.retrieval import indexes, recognition
from dolg_tf.retrieval import recognition_metrics as rm
from tests import testutil

# Database: d1 (landmark 1) and d2, d3 (landmark 2), d4 (landmark 3); query q = e0.
# Cosine similarities to q: d1 1.0, d2 0.8, d3 0.6, d4 0.0.
DATABASE = {
  "d1": [1.0, 0.0, 0.0],
  "d2": [0.8, 0.6, 0.0],
  "d3": [0.6, 0.8, 0.0],
  "d4": [0.0, 0.0, 1.0],
}
LABELS = {"d1": 1, "d2": 2, "d3": 2, "d4": 3}
# n (a non-landmark image): d4 0.8, d3 0.48, d2 0.36, d1 0.0.
QUERIES = {"q": [1.0, 0.0, 0.0], "n": [0.0, 0.6, 0.8]}


def _write_per_image(directory, vectors, suffix=".dolg_global"):
  os.makedirs(directory, exist_ok=True)
  for name, vector in vectors.items():
    datum_io.write_to_file(os.path.join(directory, name + suffix), np.asarray(vector, np.float32))


def _write_labels(path, labels, header="id,landmark_id"):
  with open(path, "w") as f:
    f.write(header + "\n")
    for name, label in labels.items():
      f.write(f"{name},{label}\n")


class RecognitionTestBase(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.db_dir = os.path.join(self.root, "db")
    self.query_dir = os.path.join(self.root, "query")
    self.labels = os.path.join(self.root, "labels.csv")
    _write_per_image(self.db_dir, DATABASE)
    _write_per_image(self.query_dir, QUERIES)
    _write_labels(self.labels, LABELS)

  def inputs(self, **kwargs):
    return recognition.RecognitionInputs(self.db_dir, self.labels, self.query_dir, **kwargs)


class VotingTest(RecognitionTestBase, parameterized.TestCase):
  @parameterized.parameters(
    # k=3: sum: landmark 1 = 1.0, landmark 2 = 0.8 + 0.6 = 1.4 -> 2; max: 1.0 vs 0.8 -> 1.
    ("sum", 3, 2, 1.4),
    ("max", 3, 1, 1.0),
    ("sum", 1, 1, 1.0),
    ("sum", 2, 1, 1.0),  # 1.0 vs 0.8
  )
  def test_sum_and_max(self, voting, k, landmark, score):
    result = recognition.recognize(self.inputs(), recognition.RecognitionConfig(k=k, voting=voting))
    self.assertEqual(result.predictions["q"].landmark_id, landmark)
    self.assertAllClose(result.predictions["q"].score, score)
    self.assertEqual(result.neighbours["q"], ["d1", "d2", "d3", "d4"][:k])

  def test_vote_ties_and_unlabelled(self):
    # Equal totals: the landmark met first wins; None (unlabelled / padding) does not vote.
    self.assertEqual(
      recognition.vote([None, 5, 4], [0.9, 0.5, 0.5], 3, "sum"), rm.Prediction(5, 0.5)
    )
    self.assertIsNone(recognition.vote([None, None], [0.9, 0.5], 2, "max"))

  def test_threshold(self):
    # q: landmark 2 with 1.4 (sum, k=3); n: landmark 3 = 0.8, landmark 2 = 0.48 + 0.36 = 0.84.
    config = recognition.RecognitionConfig(k=3, min_score=1.0)
    result = recognition.recognize(self.inputs(), config)
    self.assertEqual(result.predictions["q"], rm.Prediction(2, result.predictions["q"].score))
    self.assertIsNone(result.predictions["n"])
    no_threshold = recognition.recognize(self.inputs(), recognition.RecognitionConfig(k=3))
    self.assertAllClose(no_threshold.predictions["n"].score, 0.84)

  def test_train_clean_labels_and_unlabelled_images(self):
    with open(self.labels, "w") as f:
      f.write("landmark_id,images\n1,d1\n2,d2 d3\n")  # d4 unlabelled: does not vote
    # n's nearest is d4 (unlabelled): k=1 predicts nothing, k=2 gives d3's landmark.
    result = recognition.recognize(self.inputs(), recognition.RecognitionConfig(k=1))
    self.assertIsNone(result.predictions["n"])
    result = recognition.recognize(self.inputs(), recognition.RecognitionConfig(k=2))
    self.assertEqual(result.predictions["n"], rm.Prediction(2, result.predictions["n"].score))
    self.assertAllClose(result.predictions["n"].score, 0.48)
    self.assertEqual(result.database_labels, {"d1": 1, "d2": 2, "d3": 2})

  def test_index_path(self):
    _, database = recognition.descriptor_reading.read_descriptors(self.db_dir)
    index_dir = os.path.join(self.root, "index")
    indexes.make_index("exact").build(database).save(index_dir)
    config = recognition.RecognitionConfig(k=3)
    exact = recognition.recognize(self.inputs(), config)
    indexed = recognition.recognize(self.inputs(index_dir=index_dir), config)
    self.assertEqual(indexed.predictions, exact.predictions)
    indexes.make_index("exact").build(database[:2]).save(index_dir)
    with self.assertRaisesRegex(ValueError, "index of 2 images"):
      recognition.recognize(self.inputs(index_dir=index_dir), config)

  def test_shards_path(self):
    for directory, vectors in ((self.db_dir, DATABASE), (self.query_dir, QUERIES)):
      directory += "_shards"
      os.makedirs(directory)
      writer = descriptor_files.ShardWriter(directory, shard_size=2)
      for name, vector in vectors.items():
        writer.write(name, np.asarray(vector, np.float32))
      writer.flush()
    shards = recognition.RecognitionInputs(
      self.db_dir + "_shards", self.labels, self.query_dir + "_shards"
    )
    config = recognition.RecognitionConfig(k=3)
    self.assertEqual(
      recognition.recognize(shards, config).predictions,
      recognition.recognize(self.inputs(), config).predictions,
    )


def _local(path, locations, descriptors):
  n = len(locations)
  feature_io.write_to_file(
    path,
    np.asarray(locations, np.float32),
    np.ones(n, np.float32),
    np.asarray(descriptors, np.float32),
    np.ones(n, np.float32),
  )


class GeometricRerankingTest(RecognitionTestBase):
  def test_inliers_change_the_decision(self):
    # Globally q is closest to d1 (landmark 1). Its local features match d2's
    # (landmark 2) exactly, shifted by (5, 7) px: 20 affine inliers; d1's and
    # the others' descriptors are unrelated (no match). k=1 votes d2 after re-ranking,
    # with score 20 + (1 + 0.8) / 2 = 20.9.
    rng = np.random.default_rng(0)
    locations = rng.uniform(0, 100, (20, 2))
    descriptors = rng.normal(size=(20, 16))
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    _local(os.path.join(self.query_dir, "q.delg_local"), locations, descriptors)
    _local(os.path.join(self.query_dir, "n.delg_local"), locations[:3], -descriptors[:3])
    _local(os.path.join(self.db_dir, "d2.delg_local"), locations + [5.0, 7.0], descriptors)
    for name in ("d1", "d3", "d4"):
      other = rng.normal(size=(20, 16))
      other /= np.linalg.norm(other, axis=1, keepdims=True)
      _local(os.path.join(self.db_dir, name + ".delg_local"), rng.uniform(0, 100, (20, 2)), other)
    inputs = self.inputs(query_local_dir=self.query_dir, database_local_dir=self.db_dir)
    before = recognition.recognize(inputs, recognition.RecognitionConfig(k=1))
    self.assertEqual(before.predictions["q"].landmark_id, 1)
    config = recognition.RecognitionConfig(k=1, use_geometric_verification=True)
    after = recognition.recognize(inputs, config)
    self.assertEqual(after.predictions["q"], rm.Prediction(2, after.predictions["q"].score))
    self.assertAllClose(after.predictions["q"].score, 20.9)
    self.assertEqual(after.neighbours["q"][0], "d2")
    # No inliers anywhere for n: global order kept, d4 first with (1 + 0.8) / 2.
    self.assertEqual(after.predictions["n"].landmark_id, 3)
    self.assertAllClose(after.predictions["n"].score, 0.9)

  def test_missing_local_dirs(self):
    config = recognition.RecognitionConfig(use_geometric_verification=True)
    with self.assertRaisesRegex(ValueError, "query_local_dir"):
      recognition.recognize(self.inputs(), config)


class CommandTest(RecognitionTestBase):
  def _run(self, *args):
    return testutil.run_module("dolg_tf.retrieval.recognize", *args)

  def _solution(self):
    path = os.path.join(self.root, "solution.csv")
    with open(path, "w") as f:
      f.write("id,landmarks,Usage\nq,2,Public\nn,,Private\n")
    return path

  def test_happy_path(self):
    output = os.path.join(self.root, "submission.csv")
    done = self._run(
      f"--database_descriptors={self.db_dir}",
      f"--database_labels={self.labels}",
      f"--query_descriptors={self.query_dir}",
      f"--solution_path={self._solution()}",
      f"--output_path={output}",
      "--k=3",
    )
    self.assertEqual(done.returncode, 0, done.stderr)
    # Public: q right (GAP 1); its relevant d2, d3 at ranks 2, 3: AP@100 (1/2 + 2/3) / 2.
    # Private: n (non-landmark) gets a prediction, no landmark image: NaN.
    self.assertIn("(Public) GAP 100.00", done.stdout)
    self.assertIn("top-1 accuracy 100.00, mAP@100 58.33", done.stdout)
    self.assertIn("(Private) GAP nan", done.stdout)
    with open(output) as f:
      self.assertEqual(f.read().splitlines()[0], "id,landmarks")
    scored = self._run(f"--solution_path={self._solution()}", f"--submission_path={output}")
    self.assertEqual(scored.returncode, 0, scored.stderr)
    self.assertIn("(Public) GAP 100.00", scored.stdout)

  def test_bad_input_file(self):
    done = self._run(
      f"--database_descriptors={self.db_dir}",
      "--database_labels=/nonexistent/labels.csv",
      f"--query_descriptors={self.query_dir}",
      f"--output_path={self.root}/s.csv",
    )
    self.assertEqual(done.returncode, 2)
    self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
    self.assertIn("labels.csv", done.stderr)
    self.assertNotIn("Traceback", done.stderr)

  def test_bad_submission_row(self):
    path = os.path.join(self.root, "bad.csv")
    with open(path, "w") as f:
      f.write("id,landmarks\nq,2 0.5 3 0.1\n")
    done = self._run(f"--solution_path={self._solution()}", f"--submission_path={path}")
    self.assertEqual(done.returncode, 2)
    self.assertRegex(done.stderr.strip(), r"^recognize: error: .*bad.csv:2: prediction for q")
    self.assertEqual(len(done.stderr.strip().splitlines()), 1)

  def test_bad_flag(self):
    for flag in ("--no_such_flag=1", "--voting=median"):
      done = self._run(flag, f"--solution_path={self._solution()}")
      self.assertEqual(done.returncode, 2, flag)
      self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
      self.assertNotIn("Traceback", done.stderr)


if __name__ == "__main__":
  tf.test.main()
