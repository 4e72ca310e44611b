"""Tests for dolg_tf.retrieval.perform_retrieval on hand-made descriptors."""

import json
import os
import pickle

import numpy as np
import tensorflow as tf

from dolg_tf.io import datum_io
from dolg_tf.retrieval import perform_retrieval


class PerformRetrievalTest(tf.test.TestCase):
  def _write(self, directory, names, vectors):
    os.makedirs(directory, exist_ok=True)
    for name, vector in zip(names, vectors):
      datum_io.write_to_file(os.path.join(directory, name + ".dolg_global"), vector)

  def test_perfect_and_reversed_descriptors(self):
    root = self.create_tempdir().full_path
    # Two landmarks (axes 0 and 1); db0/db1 easy views of q0, db2 easy of q1, db3 hard of q1.
    db = np.array([[1, 0.1, 0], [1, 0.2, 0], [0.1, 1, 0], [0.3, 1, 0.2]], np.float32)
    queries = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    gnd = {
      "imlist": ["db0", "db1", "db2", "db3"],
      "qimlist": ["q0", "q1"],
      "gnd": [
        {"easy": [0, 1], "hard": [], "junk": [], "bbx": [0, 0, 10, 10]},
        {"easy": [2], "hard": [3], "junk": [], "bbx": [0, 0, 10, 10]},
      ],
    }
    with open(os.path.join(root, "gnd_test.pkl"), "wb") as f:
      pickle.dump(gnd, f)
    self._write(os.path.join(root, "features"), gnd["imlist"], db)
    self._write(os.path.join(root, "features"), gnd["qimlist"], queries)
    results, summary = perform_retrieval.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "features"),
      os.path.join(root, "features"),
    )
    for protocol in ("easy", "medium", "hard"):
      self.assertAllClose(results[protocol].mean_ap, 1.0)
    self.assertIn("mAP", summary)
    path = perform_retrieval.write_metrics(results, summary, os.path.join(root, "out"))
    with open(path) as f:
      self.assertAlmostEqual(json.load(f)["medium"]["mAP"], 1.0)

    # Swapped query descriptors: each query ranks the other landmark first.
    self._write(os.path.join(root, "swapped"), gnd["qimlist"], queries[::-1])
    results, _ = perform_retrieval.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "swapped"),
      os.path.join(root, "features"),
    )
    # Every positive now ranks behind the other landmark's images.
    self.assertLess(results["medium"].mean_ap, 0.6)

  def test_missing_descriptors_are_named(self):
    root = self.create_tempdir().full_path
    with open(os.path.join(root, "gnd.pkl"), "wb") as f:
      pickle.dump(
        {"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [], "junk": []}]}, f
      )
    self._write(os.path.join(root, "f"), ["a"], np.ones([1, 3], np.float32))
    with self.assertRaises(KeyError):
      perform_retrieval.evaluate(
        os.path.join(root, "gnd.pkl"), os.path.join(root, "f"), os.path.join(root, "f")
      )


if __name__ == "__main__":
  tf.test.main()
