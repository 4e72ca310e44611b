"""Tests for dolg_tf.retrieval.perform_retrieval on hand-made descriptors."""

import dataclasses
import json
import os
import pickle
import re
from unittest import mock

import numpy as np
import tensorflow as tf
from absl import flags

from dolg_tf.io import datum_io, descriptor_reading
from dolg_tf.retrieval import evaluation as evaluation_lib
from dolg_tf.retrieval import (
  geometric_verification,
  perform_retrieval,
  query_expansion,
  retrieval_config,
)
from dolg_tf.utils import cli
from tests import testutil


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
    evaluation = evaluation_lib.evaluate(
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
    path = evaluation_lib.write_metrics(results, summary, os.path.join(root, "out"))
    with open(path) as f:
      self.assertAlmostEqual(json.load(f)["medium"]["mAP"], 1.0)

    # Swapped query descriptors: each query ranks the other landmark first.
    self._write(os.path.join(root, "swapped"), gnd["qimlist"], queries[::-1])
    results = evaluation_lib.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "swapped"),
      os.path.join(root, "features"),
    ).results
    # Every positive now ranks behind the other landmark's images.
    self.assertLess(results["medium"].mean_ap, 0.6)

    # Distractors closer to the queries than every positive push them down.
    self._write(os.path.join(root, "distractors"), ["x0", "x1"], queries * 1.0 + [0, 0, 0.01])
    evaluation = evaluation_lib.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "features"),
      os.path.join(root, "features"),
      os.path.join(root, "distractors"),
    )
    self.assertEqual(evaluation.num_database, 6)
    self.assertLess(evaluation.results["easy"].mean_ap, 1.0)
    # num_ranked keeps only the top-k: q1's hard positive db3 (rank 2) is cut at k = 1.
    cut = evaluation_lib.evaluate(
      os.path.join(root, "gnd_test.pkl"),
      os.path.join(root, "features"),
      os.path.join(root, "features"),
      config=retrieval_config.RetrievalConfig(num_ranked=1),
    )
    # Hard: q0 has no hard positive (skipped), q1's db3 is cut off.
    self.assertAllClose(cut.results["hard"].mean_ap, 0.0)
    self.assertEqual(cut.results["hard"].num_skipped, 1)
    # Easy: q0 finds one of its two positives at rank 1, q1 its one.
    self.assertAllClose(cut.results["easy"].mean_ap, (0.5 + 1.0) / 2)

  def test_geometric_verification_flags_come_from_the_config(self):
    flag_values = flags.FlagValues()
    mapping = perform_retrieval.define_flags(flag_values)
    self.assertEqual(perform_retrieval.define_flags(flag_values), mapping)  # a no-op
    defaults = geometric_verification.GeometricVerificationConfig()
    flag_values(["prog"])
    not_given = retrieval_config.from_flags(mapping, flag_values).geometric_verification
    for field in dataclasses.fields(defaults):
      self.assertEqual(mapping["gv_" + field.name], "geometric_verification." + field.name)
      self.assertEqual(getattr(not_given, field.name), getattr(defaults, field.name))
    flag_values(["prog", "--gv_top_k=7", "--gv_max_anisotropy=2", "--gv_model=homography"])
    config = retrieval_config.from_flags(mapping, flag_values).geometric_verification
    self.assertEqual((config.top_k, config.max_anisotropy, config.model), (7, 2.0, "homography"))
    self.assertEqual(config.residual_threshold, defaults.residual_threshold)
    self.assertIsNone(config.max_scale_change)
    flag_values["gv_max_scale_change"].value = 0.0
    with self.assertRaisesRegex(cli.UserError, "--gv_max_scale_change: must be > 0 or None"):
      retrieval_config.from_flags(mapping, flag_values)

  def test_flag_names_and_defaults_stay(self):
    flag_values = flags.FlagValues()
    mapping = perform_retrieval.define_flags(flag_values)
    for name in (
      "dataset_file_path",
      "query_features_dir",
      "index_features_dir",
      "distractor_features",
      "suffix",
      "qe_n",
      "dba_n",
      "alpha",
      "superglobal_m",
      "superglobal_k",
      "superglobal_beta",
      "num_ranked",
      "output_dir",
      "report_dir",
      "images_dir",
      "use_geometric_verification",
      "local_suffix",
    ):
      self.assertIn(name, flag_values)
    flag_values(["prog"])
    self.assertEqual(
      retrieval_config.from_flags(mapping, flag_values), retrieval_config.RetrievalConfig()
    )
    flag_values(
      ["prog", "--qe_n=2", "--alpha=1", "--superglobal_k=5", "--use_geometric_verification"]
    )
    config = retrieval_config.from_flags(mapping, flag_values)
    self.assertEqual((config.query_expansion.qe_n, config.query_expansion.alpha), (2, 1.0))
    self.assertEqual(config.superglobal.k, 5)
    self.assertTrue(config.use_geometric_verification)
    self.assertEqual(config.suffix, ".dolg_global")

  def test_retrieval_config_overrides(self):
    config = retrieval_config.RetrievalConfig().overridden(
      {"num_ranked": 5, "superglobal": {"m": 40}, "geometric_verification": {"top_k": 3}}
    )
    self.assertEqual((config.num_ranked, config.superglobal.m), (5, 40))
    self.assertEqual(config.superglobal.k, retrieval_config.RetrievalConfig().superglobal.k)
    self.assertEqual(config.geometric_verification.top_k, 3)
    with self.assertRaisesRegex(ValueError, "^unknown retrieval config field superglobal.n$"):
      config.overridden({"superglobal": {"n": 1}})
    with self.assertRaisesRegex(ValueError, "^unknown retrieval config field qe$"):
      config.overridden({"qe": 1})
    with self.assertRaisesRegex(ValueError, "^superglobal_m=40 cannot be combined with qe_n=2"):
      config.overridden({"query_expansion": {"qe_n": 2}})

  def test_missing_descriptors_are_named(self):
    root = self.create_tempdir().full_path
    with open(os.path.join(root, "gnd.pkl"), "wb") as f:
      pickle.dump(
        {"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [], "junk": []}]}, f
      )
    self._write(os.path.join(root, "f"), ["a"], np.ones([1, 3], np.float32))
    with self.assertRaises(KeyError):
      evaluation_lib.evaluate(
        os.path.join(root, "gnd.pkl"), os.path.join(root, "f"), os.path.join(root, "f")
      )


class UserErrorsTest(tf.test.TestCase):
  """Bad inputs: counted / named before anything is ranked; dolg-retrieve exits 2 with one line."""

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.imlist = [f"db{i}" for i in range(7)]
    self.qimlist = ["q0", "q1", "q2"]
    self.gnd = os.path.join(self.root, "gnd_test.pkl")
    gnd = [{"easy": [i], "hard": [], "junk": []} for i in range(3)]
    with open(self.gnd, "wb") as f:
      pickle.dump({"imlist": self.imlist, "qimlist": self.qimlist, "gnd": gnd}, f)
    self.queries = os.path.join(self.root, "queries")
    self.index = os.path.join(self.root, "index")

  def _write(self, directory, names, dim=4, seed=0):
    os.makedirs(directory, exist_ok=True)
    vectors = np.random.default_rng(seed).normal(size=[len(names), dim]).astype(np.float32)
    for name, vector in zip(names, vectors):
      datum_io.write_to_file(os.path.join(directory, name + ".dolg_global"), vector)

  def _evaluate(self, **kwargs):
    return evaluation_lib.evaluate(self.gnd, self.queries, self.index, **kwargs)

  def test_missing_descriptors_are_all_counted_before_any_is_read(self):
    self._write(self.queries, ["q0"])
    self._write(self.index, ["db0", "db2", "db3", "db4", "db5"])
    expected = (
      f"2 of 3 query descriptors missing in {self.queries}: q1, q2; "
      f"2 of 7 index descriptors missing in {self.index}: db1, db6"
    )
    with (
      mock.patch.object(descriptor_reading, "read_descriptors") as read,
      mock.patch.object(query_expansion, "search_with_expansion") as ranking,
    ):
      with self.assertRaises(descriptor_reading.MissingDescriptorsError) as raised:
        self._evaluate()
    self.assertEqual(str(raised.exception), expected)
    self.assertIsInstance(raised.exception, ValueError)
    read.assert_not_called()
    ranking.assert_not_called()
    many = [f"all_souls_{i:06d}" for i in range(70)]
    with open(self.gnd, "wb") as f:
      gnd = [{"easy": [0], "hard": [], "junk": []}] * 70
      pickle.dump({"imlist": self.imlist, "qimlist": many, "gnd": gnd}, f)
    self._write(self.queries, many[:58])
    self._write(self.index, self.imlist)
    with self.assertRaisesRegex(
      ValueError,
      "^"
      + re.escape(
        f"12 of 70 query descriptors missing in {self.queries}: all_souls_000058, "
        "all_souls_000059, all_souls_000060, all_souls_000061, all_souls_000062, ..."
      )
      + "$",
    ):
      self._evaluate()

  def test_missing_local_features_are_counted_before_ranking(self):
    self._write(self.queries, self.qimlist)
    self._write(self.index, self.imlist)
    with mock.patch.object(query_expansion, "search_with_expansion") as ranking:
      with self.assertRaisesRegex(
        ValueError,
        re.escape(f"3 of 3 query local feature files (*.delg_local) missing in {self.queries}")
        + ".*"
        + re.escape(f"7 of 7 index local feature files (*.delg_local) missing in {self.index}"),
      ):
        self._evaluate(config=retrieval_config.RetrievalConfig(use_geometric_verification=True))
    ranking.assert_not_called()

  def test_dimension_mismatches_name_both_sides_before_the_index_is_read(self):
    self._write(self.queries, self.qimlist, dim=64)
    self._write(self.index, self.imlist, dim=128)
    with mock.patch.object(
      descriptor_reading, "read_descriptors", wraps=descriptor_reading.read_descriptors
    ) as read:
      with self.assertRaisesRegex(
        ValueError,
        "^"
        + re.escape(
          f"descriptor dimensions differ: query descriptors are 64-D ({self.queries}), "
          f"index descriptors 128-D ({self.index})"
        )
        + "$",
      ):
        self._evaluate()
    self.assertEqual([c.args[0] for c in read.call_args_list], [self.queries])
    self._write(self.index, self.imlist, dim=64)
    distractors = os.path.join(self.root, "distractors")
    np.savez(
      os.path.join(distractors + ".npz"),
      ids=np.array(["x0", "x1"]),
      descriptors=np.ones([2, 32], np.float32),
    )
    with self.assertRaisesRegex(
      ValueError,
      re.escape(f"query descriptors are 64-D ({self.queries}), distractor descriptors 32-D"),
    ):
      self._evaluate(distractor_source=distractors + ".npz")

  def test_truncated_and_non_finite_descriptor_files_are_named(self):
    self._write(self.queries, self.qimlist)
    self._write(self.index, self.imlist)
    path = os.path.join(self.index, "db3.dolg_global")
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:-3])
    with self.assertRaisesRegex(OSError, "^" + re.escape(path) + ": corrupt DatumProto file"):
      self._evaluate()
    datum_io.write_to_file(path, np.array([1, np.nan, 0, 0], np.float32))
    with self.assertRaisesRegex(ValueError, "^" + re.escape(path) + ": non-finite descriptor"):
      self._evaluate()

  def _run(self, *args):
    return testutil.run_module(
      "dolg_tf.retrieval.perform_retrieval", *args, cwd=self.root, timeout=120
    )

  def _assert_one_line_error(self, result, message):
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn("Traceback", result.stderr)
    self.assertEqual(result.stderr.strip().splitlines(), [f"perform_retrieval: error: {message}"])

  def test_command_line_errors_are_one_line_and_exit_2(self):
    self._write(self.queries, ["q0", "q1"], dim=8)
    self._write(self.index, self.imlist, dim=16)
    flags_ = [
      f"--dataset_file_path={self.gnd}",
      "--query_features_dir=queries",
      "--index_features_dir=index",
    ]
    self._assert_one_line_error(
      self._run(*flags_), f"1 of 3 query descriptors missing in {self.queries}: q2"
    )
    self._write(self.queries, ["q2"], dim=8)
    self._assert_one_line_error(
      self._run(*flags_),
      f"descriptor dimensions differ: query descriptors are 8-D ({self.queries}), "
      f"index descriptors 16-D ({self.index})",
    )
    with open(self.gnd, "rb") as f:
      data = f.read()
    with open(self.gnd, "wb") as f:
      f.write(data[: len(data) // 2])
    self._assert_one_line_error(
      self._run(*flags_),
      f"{self.gnd}: not a readable pickle (UnpicklingError: pickle data was truncated)",
    )
    with open(self.gnd, "wb") as f:
      pickle.dump({"imlist": self.imlist, "gnd": []}, f)
    self._assert_one_line_error(self._run(*flags_), f"{self.gnd}: missing key(s) qimlist")
    with open(self.gnd, "w") as f:
      f.write("imlist = db0 db1\n")
    result = self._run(*flags_)
    self._assert_one_line_error(
      result, result.stderr.strip().removeprefix("perform_retrieval: error: ")
    )
    self.assertStartsWith(result.stderr, f"perform_retrieval: error: {self.gnd}: not a readable")


if __name__ == "__main__":
  tf.test.main()
