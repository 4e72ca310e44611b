"""Tests for dolg_tf.retrieval.perform_retrieval on hand-made descriptors."""

import dataclasses
import json
import os
import pickle
from unittest import mock

import numpy as np
import tensorflow as tf
from absl import flags

from dolg_tf.io import datum_io
from dolg_tf.retrieval import perform_retrieval
from dolg_tf.utils import cli


class _Flags:
  """absl.flags with the DEFINE_* functions bound to one FlagValues."""

  def __init__(self, flag_values):
    self._flag_values = flag_values

  def __getattr__(self, name):
    define = getattr(flags, name)
    return lambda *args, **kwargs: define(*args, flag_values=self._flag_values, **kwargs)


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
    evaluation = perform_retrieval.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "features"),
      os.path.join(root, "features"),
    )
    results, summary = evaluation.results, evaluation.summary
    self.assertIs(evaluation.global_results, results)
    self.assertEqual(evaluation.num_database, 4)
    for protocol in ("easy", "medium", "hard"):
      self.assertAllClose(results[protocol].mean_ap, 1.0)
    self.assertIn("mAP", summary)
    path = perform_retrieval.write_metrics(results, summary, os.path.join(root, "out"))
    with open(path) as f:
      self.assertAlmostEqual(json.load(f)["medium"]["mAP"], 1.0)

    # Swapped query descriptors: each query ranks the other landmark first.
    self._write(os.path.join(root, "swapped"), gnd["qimlist"], queries[::-1])
    results = perform_retrieval.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "swapped"),
      os.path.join(root, "features"),
    ).results
    # Every positive now ranks behind the other landmark's images.
    self.assertLess(results["medium"].mean_ap, 0.6)

    # Distractors closer to the queries than every positive push them down.
    self._write(os.path.join(root, "distractors"), ["x0", "x1"], queries * 1.0 + [0, 0, 0.01])
    evaluation = perform_retrieval.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "features"),
      os.path.join(root, "features"),
      os.path.join(root, "distractors"),
    )
    self.assertEqual(evaluation.num_database, 6)
    self.assertLess(evaluation.results["easy"].mean_ap, 1.0)
    # num_ranked keeps only the top-k: q1's hard positive db3 (rank 2) is cut at k = 1.
    cut = perform_retrieval.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "features"),
      os.path.join(root, "features"),
      num_ranked=1,
    )
    # Hard: q0 has no hard positive (skipped), q1's db3 is cut off.
    self.assertAllClose(cut.results["hard"].mean_ap, 0.0)
    self.assertEqual(cut.results["hard"].num_skipped, 1)
    # Easy: q0 finds one of its two positives at rank 1, q1 its one.
    self.assertAllClose(cut.results["easy"].mean_ap, (0.5 + 1.0) / 2)

  def test_geometric_verification_flags_come_from_the_config(self):
    flag_values = flags.FlagValues()
    with mock.patch.object(perform_retrieval, "flags", _Flags(flag_values)):
      perform_retrieval.define_geometric_verification_flags()
    defaults = perform_retrieval.GeometricVerificationConfig()
    for field in dataclasses.fields(defaults):
      self.assertEqual(flag_values["gv_" + field.name].default, getattr(defaults, field.name))
    flag_values(["prog", "--gv_top_k=7", "--gv_max_anisotropy=2", "--gv_model=homography"])
    with mock.patch.object(perform_retrieval, "FLAGS", flag_values):
      config = perform_retrieval.geometric_verification_from_flags()
    self.assertEqual((config.top_k, config.max_anisotropy, config.model), (7, 2.0, "homography"))
    self.assertEqual(config.residual_threshold, defaults.residual_threshold)
    self.assertIsNone(config.max_scale_change)
    flag_values["gv_max_scale_change"].value = 0.0
    with mock.patch.object(perform_retrieval, "FLAGS", flag_values):
      with self.assertRaisesRegex(cli.UserError, "--gv_max_scale_change: must be > 0 or None"):
        perform_retrieval.geometric_verification_from_flags()

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
