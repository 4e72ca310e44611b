"""Tests for ASMK retrieval in dolg-retrieve (asmk_rerank.py, evaluation.evaluate, the command)."""

import dataclasses
import json
import os
import pickle

import numpy as np
import tensorflow as tf

from dolg_tf.io import datum_io, feature_io
from dolg_tf.protos import aggregation_config_pb2
from dolg_tf.retrieval import aggregation, asmk_rerank, asmk_similarity, retrieval_config
from dolg_tf.retrieval import evaluation as evaluation_lib
from tests import testutil

IMLIST = [f"db{i}" for i in range(6)]
QIMLIST = ["q0", "q1"]
CONFIG_TEXT = "aggregation_type: ASMK_STAR\nfeature_dimensionality: 16\ncodebook_size: 8\n"


class RerankRanksTest(tf.test.TestCase):
  def test_top_depth_resorted_rest_unchanged(self):
    ranks = np.array([[4, 2, 0, 1, 3]])
    global_scores = np.array([[0.9, 0.6, 0.7, 0.5, 0.1]])
    asmk = {4: 0.3, 2: 0.5, 0: 0.1}

    def scores(q, candidates):
      self.assertEqual(q, 0)
      return [asmk[int(c)] for c in candidates]

    # ASMK alone on the top 3: 2 (0.5), 4 (0.3), 0 (0.1); 1 and 3 stay.
    out = asmk_rerank.rerank_ranks(ranks, global_scores, scores, depth=3)
    self.assertAllEqual(out, [[2, 4, 0, 1, 3]])
    # score = asmk + 1 x global: 4 -> 1.2, 2 -> 1.1, 0 -> 0.8.
    out = asmk_rerank.rerank_ranks(ranks, global_scores, scores, depth=3, global_weight=1.0)
    self.assertAllEqual(out, [[4, 2, 0, 1, 3]])

  def test_ties_keep_the_global_order(self):
    ranks = np.array([[3, 1, 2, 0]])
    out = asmk_rerank.rerank_ranks(
      ranks, np.zeros((1, 4)), lambda q, c: np.where(c == 2, 1.0, 0.0), depth=4
    )
    self.assertAllEqual(out, [[2, 3, 1, 0]])


class AsmkRetrievalTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.features = os.path.join(self.root, "features")
    self.agg = os.path.join(self.root, "agg")
    os.makedirs(self.features)
    os.makedirs(self.agg)
    self.gnd = os.path.join(self.root, "gnd_test.pkl")
    gnd = {
      "imlist": IMLIST,
      "qimlist": QIMLIST,
      "gnd": [
        {"easy": [0, 1], "hard": [2], "junk": [], "bbx": [0, 0, 10, 10]},
        {"easy": [3], "hard": [4], "junk": [5], "bbx": [0, 0, 10, 10]},
      ],
    }
    with open(self.gnd, "wb") as f:
      pickle.dump(gnd, f)
    rng = np.random.default_rng(3)
    for name in IMLIST + QIMLIST:
      datum_io.write_to_file(
        os.path.join(self.features, name + ".dolg_global"),
        rng.normal(size=4).astype(np.float32),
      )
      words = np.sort(rng.choice(8, size=int(rng.integers(1, 6)), replace=False))
      bits = rng.integers(0, 256, size=2 * len(words)).astype(np.uint8)
      aggregation.write_aggregated(os.path.join(self.agg, name + ".asmk_star"), bits, words)
      n = 12
      feature_io.write_to_file(
        os.path.join(self.features, name + ".delg_local"),
        rng.uniform(0, 100, size=(n, 2)).astype(np.float32),
        np.ones(n, np.float32),
        rng.normal(size=(n, 8)).astype(np.float32),
        np.ones(n, np.float32),
      )
    self.config_path = os.path.join(self.root, "index_aggregation.pbtxt")
    with open(self.config_path, "w") as f:
      f.write(CONFIG_TEXT)

  def _config(self, **asmk):
    options = {"aggregation_config": self.config_path, "index_dir": self.agg, "query_dir": self.agg}
    options.update(asmk)
    return retrieval_config.RetrievalConfig().overridden({"asmk": options})

  def _brute_force(self):
    config = aggregation_config_pb2.AggregationConfig(
      aggregation_type=asmk_similarity.ASMK_STAR, feature_dimensionality=16
    )
    similarity = asmk_similarity.AggregatedSimilarity(config)
    read = lambda n: aggregation.read_aggregated(os.path.join(self.agg, n + ".asmk_star"))  # noqa: E731
    database = [read(n) for n in IMLIST]
    return np.array(
      [[similarity.compare(*read(q)[:1], d, read(q)[1], w) for d, w in database] for q in QIMLIST]
    )

  def test_alone_ranks_by_pairwise_similarity_without_global_descriptors(self):
    empty = self.create_tempdir().full_path  # no global descriptors there
    evaluation = evaluation_lib.evaluate(self.gnd, empty, empty, config=self._config(mode="alone"))
    expected = np.argsort(-self._brute_force(), axis=1, kind="stable")
    self.assertAllEqual(evaluation.ranks, expected)
    self.assertIs(evaluation.asmk_results, evaluation.results)
    self.assertIn("ASMK_STAR alone (inverted file of", evaluation.summary)
    self.assertIn("ms per query: ASMK", evaluation.summary)

  def test_rerank_resorts_the_top_depth_only(self):
    plain = evaluation_lib.evaluate(self.gnd, self.features, self.features)
    evaluation = evaluation_lib.evaluate(
      self.gnd, self.features, self.features, config=self._config(mode="rerank", depth=3)
    )
    similarities = self._brute_force()
    for q in range(2):
      top = plain.ranks[q, :3]
      expected = top[np.argsort(-similarities[q, top], kind="stable")]
      self.assertAllEqual(evaluation.ranks[q, :3], expected)
      self.assertAllEqual(evaluation.ranks[q, 3:], plain.ranks[q, 3:])
    self.assertEqual(list(evaluation.stage_ms), ["global search", "ASMK"])
    self.assertIn("before ASMK_STAR re-ranking:", evaluation.summary)
    self.assertIn(
      "after ASMK_STAR re-ranking (top 3, score = ASMK_STAR + 0 x global", evaluation.summary
    )

  def test_geometric_verification_after_asmk(self):
    config = dataclasses.replace(
      self._config(mode="rerank", depth=6), use_geometric_verification=True
    )
    evaluation = evaluation_lib.evaluate(self.gnd, self.features, self.features, config=config)
    self.assertEqual(list(evaluation.stage_ms), ["global search", "ASMK", "geometric verification"])
    self.assertIsNotNone(evaluation.asmk_results)
    self.assertIn("after geometric verification", evaluation.summary)
    # One image verified: a window of 1 changes nothing, GV starts from the ASMK ranking.
    config = config.overridden({"geometric_verification": {"top_k": 1}})
    evaluation = evaluation_lib.evaluate(self.gnd, self.features, self.features, config=config)
    self.assertAllEqual(evaluation.reranked["easy"], evaluation.ranks)

  def test_distractors_score_minus_one_in_rerank(self):
    distractors = os.path.join(self.root, "distractors")
    os.makedirs(distractors)
    for i in range(3):
      # Each distractor a copy of a query's descriptor: first in the global ranking.
      vector = datum_io.read_from_file(os.path.join(self.features, f"q{i % 2}.dolg_global"))
      datum_io.write_to_file(os.path.join(distractors, f"x{i}.dolg_global"), vector)
    plain = evaluation_lib.evaluate(self.gnd, self.features, self.features, distractors)
    self.assertGreaterEqual(plain.ranks[0, 0], len(IMLIST))
    evaluation = evaluation_lib.evaluate(
      self.gnd, self.features, self.features, distractors, self._config(mode="rerank", depth=9)
    )
    # Every index image has ASMK* words (> -1): the distractors end the re-sorted window.
    for q in range(2):
      window = evaluation.ranks[q, :9]
      self.assertTrue((window[-3:] >= len(IMLIST)).all(), window)
      self.assertTrue((window[:-3] < len(IMLIST)).all(), window)

  def test_refused_combinations(self):
    with self.assertRaisesRegex(ValueError, "asmk_mode=rerank cannot be combined with superglobal"):
      self._config(mode="rerank").overridden({"superglobal": {"m": 10}})
    with self.assertRaisesRegex(ValueError, "asmk_mode=alone cannot be combined with qe_n=2"):
      retrieval_config.RetrievalConfig().overridden(
        {"query_expansion": {"qe_n": 2}, "asmk": {"mode": "alone", "aggregation_config": "x"}}
      )
    with self.assertRaisesRegex(ValueError, "aggregation_config: required with mode=rerank"):
      retrieval_config.RetrievalConfig().overridden({"asmk": {"mode": "rerank"}})
    with self.assertRaisesRegex(ValueError, "distractors have no aggregated files"):
      evaluation_lib.evaluate(
        self.gnd, self.features, self.features, self.features, self._config(mode="alone")
      )

  def test_missing_aggregated_files_are_counted(self):
    os.remove(os.path.join(self.agg, "db2.asmk_star"))
    with self.assertRaisesRegex(
      ValueError, r"1 of 6 index aggregated files \(\*\.asmk_star\) missing in .*agg: db2"
    ):
      evaluation_lib.evaluate(
        self.gnd, self.features, self.features, config=self._config(mode="rerank")
      )

  # The command, by subprocess.

  def _run(self, *args):
    return testutil.run_module(
      "dolg_tf.retrieval.perform_retrieval",
      f"--dataset_file_path={self.gnd}",
      f"--query_features_dir={self.features}",
      f"--index_features_dir={self.features}",
      *args,
      cwd=self.root,
      timeout=120,
    )

  def test_command_rerank_and_alone(self):
    asmk = [
      f"--asmk_aggregation_config={self.config_path}",
      "--asmk_index_dir=agg",
      "--asmk_query_dir=agg",
    ]
    result = self._run("--asmk_mode=rerank", "--asmk_depth=4", "--output_dir=out", *asmk)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("after ASMK_STAR re-ranking (top 4", result.stdout)
    self.assertRegex(result.stdout, r"ms per query: global search [\d.]+, ASMK [\d.]+")
    with open(os.path.join(self.root, "out", "metrics.json")) as f:
      payload = json.load(f)
    self.assertEqual(sorted(payload["ms_per_query"]), ["ASMK", "global search"])
    result = self._run("--asmk_mode=alone", *asmk)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("ASMK_STAR alone", result.stdout)

  def test_command_corrupt_aggregated_file_is_named(self):
    path = os.path.join(self.agg, "db3.asmk_star")
    with open(path, "wb") as f:
      f.write(b"\xff\xff\xff")
    testutil.assert_one_line_error(
      self,
      "perform_retrieval",
      self._run(
        "--asmk_mode=alone",
        f"--asmk_aggregation_config={self.config_path}",
        "--asmk_index_dir=agg",
        "--asmk_query_dir=agg",
      ),
      ".*agg/db3.asmk_star",
    )

  def test_command_errors_are_one_line(self):
    bad = os.path.join(self.root, "bad.pbtxt")
    with open(bad, "w") as f:
      f.write("aggregation_type: ASMK_STAR\nalfa: 3.0\n")
    testutil.assert_one_line_error(
      self,
      "perform_retrieval",
      self._run("--asmk_mode=rerank", f"--asmk_aggregation_config={bad}", "--asmk_index_dir=agg"),
      ".*bad.pbtxt:2:1: .*alfa",
    )
    testutil.assert_one_line_error(
      self,
      "perform_retrieval",
      self._run("--asmk_mode=sometimes", f"--asmk_aggregation_config={self.config_path}"),
      "--asmk_mode: must be one of off, alone, rerank, got 'sometimes'",
    )
    testutil.assert_one_line_error(
      self,
      "perform_retrieval",
      self._run("--asmk_mode=rerank"),
      "--asmk_aggregation_config: required with mode=rerank",
    )
    testutil.assert_one_line_error(
      self,
      "perform_retrieval",
      self._run("--asmk_mode=rerank", f"--asmk_aggregation_config={self.config_path}"),
      r"2 of 2 query aggregated files \(\*\.asmk_star\) missing in .*features: q0, q1; "
      r"6 of 6 index aggregated files",
    )


if __name__ == "__main__":
  tf.test.main()
