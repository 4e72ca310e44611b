"""Tests for dolg_tf.retrieval.superglobal (re-ranking) and its use in perform_retrieval."""

import os
import pickle
from unittest import mock

import numpy as np
import tensorflow as tf

from dolg_tf.io import datum_io
from dolg_tf.retrieval import evaluation as evaluation_lib
from dolg_tf.retrieval import (
  exact_search,
  geometric_verification,
  indexes,
  query_expansion,
  rerank,
  retrieval_config,
  superglobal,
)
from dolg_tf.utils import arrays
from tests import testutil


def _superglobal_config(m, **kwargs):
  """A RetrievalConfig with SuperGlobal re-ranking of the top m."""
  return retrieval_config.RetrievalConfig(superglobal=superglobal.SuperGlobalConfig(m=m), **kwargs)


def _unit(x):
  return arrays.l2_normalize(np.asarray(x, dtype=np.float32), axis=-1)


def _per_query_loop(queries, database, ids, m, k, beta):
  """SuperGlobal written plainly, one query and one candidate at a time."""
  out = ids.copy()
  for row, (q, ranking) in enumerate(zip(_unit(queries), ids)):
    top = ranking[:m]
    x = _unit(database[top])
    refined = []
    for i in range(len(top)):
      sims = x @ x[i]
      sims[i] = -np.inf
      neighbours = np.argsort(-sims, kind="stable")[:k]
      w = beta * np.maximum(sims[neighbours], 0)
      refined.append((x[i] + w @ x[neighbours]) / (1 + w.sum()))
    refined = np.array(refined)
    s1 = refined @ q
    order = np.argsort(-s1, kind="stable")
    s2 = refined @ refined[order[: k + 1]].max(axis=0)
    final = (s1 + s2) / 2
    out[row, : len(top)] = top[order[np.argsort(-final[order], kind="stable")]]
  return out


class StepsTest(tf.test.TestCase):
  """Each step on 5 database vectors in 3-D, computed by hand."""

  # x0..x4; the query q = (0.8, 0, 0.6) has cosines 0.8, 0.64, 0.48, 0, 0.6:
  # initial ranking x0, x1, x4, x2, x3.
  DB = np.array([[1, 0, 0], [0.8, 0.6, 0], [0.6, 0.8, 0], [0, 1, 0], [0, 0, 1]], np.float32)
  QUERY = np.array([[0.8, 0, 0.6]], np.float32)

  def test_hand_computed_case(self):
    ids, scores = exact_search.exact_search(self.QUERY, self.DB, 5)
    self.assertAllEqual(ids, [[0, 1, 4, 2, 3]])
    # M = 4 (x0, x1, x4, x2), K = 1, beta = 0.5. Cosines among the four:
    # x0.x1 = 0.8, x0.x2 = 0.6, x1.x2 = 0.96, x4 is orthogonal to all three.
    # Nearest other: x0 -> x1 (0.8), x1 -> x2 (0.96), x4 -> x0 (all 0: the
    # earliest ranked; weight 0.5 * 0 = 0), x2 -> x1 (0.96).
    #   r0 = (x0 + 0.4 x1) / 1.4   = (1.32, 0.24, 0) / 1.4
    #   r1 = (x1 + 0.48 x2) / 1.48 = (1.088, 0.984, 0) / 1.48
    #   r4 = x4                    = (0, 0, 1)
    #   r2 = (x2 + 0.48 x1) / 1.48 = (0.984, 1.088, 0) / 1.48
    top = ids[:, :4]
    refined = superglobal.refine_candidates(self.DB[top], top >= 0, 1, 0.5)
    expected = np.array(
      [
        [1.32 / 1.4, 0.24 / 1.4, 0],
        [1.088 / 1.48, 0.984 / 1.48, 0],
        [0, 0, 1],
        [0.984 / 1.48, 1.088 / 1.48, 0],
      ]
    )
    self.assertAllClose(refined[0], expected, atol=1e-6)
    # s1 = q . r (no re-normalisation): 1.056 / 1.4, 0.6, 0.8704 / 1.48, 0.7872 / 1.48
    # = 0.7543 (x0), 0.5881 (x1), 0.6 (x4), 0.5319 (x2): x4 overtakes x1.
    s1 = refined[0] @ self.QUERY[0]
    self.assertAllClose(s1, [1.056 / 1.4, 0.8704 / 1.48, 0.6, 0.7872 / 1.48], atol=1e-6)
    # Step 2 takes the top K + 1 = 2 of the s1 order, r0 and r4, and their
    # elementwise max q_exp = (1.32 / 1.4, 0.24 / 1.4, 1).
    order = np.argsort(-s1, kind="stable")[None]
    self.assertAllEqual(top[0, order[0]], [0, 4, 1, 2])
    expanded = superglobal.max_expanded_query(refined, order, top >= 0, 1)
    self.assertAllClose(expanded, [[1.32 / 1.4, 0.24 / 1.4, 1.0]], atol=1e-6)
    # s2 = q_exp . r: x0 (1.32^2 + 0.24^2) / 1.96 = 1.8 / 1.96, x4 1 (q_exp is
    # not weighted by beta), x1 (1.32 * 1.088 + 0.24 * 0.984) / 2.072 = 1.67232 / 2.072,
    # x2 (1.32 * 0.984 + 0.24 * 1.088) / 2.072 = 1.56 / 2.072.
    # Final (s1 + s2) / 2: x0 0.8363, x4 0.8, x1 0.6976, x2 0.6424; x3 (beyond M)
    # keeps its place and its initial score 0.
    new_ids, new_scores = superglobal.superglobal_rerank(
      self.QUERY, self.DB, ids, scores, m=4, k=1, beta=0.5
    )
    self.assertAllEqual(new_ids, [[0, 4, 1, 2, 3]])
    expected_scores = [
      (1.056 / 1.4 + 1.8 / 1.96) / 2,
      (0.6 + 1.0) / 2,
      (0.8704 / 1.48 + 1.67232 / 2.072) / 2,
      (0.7872 / 1.48 + 1.56 / 2.072) / 2,
      0.0,
    ]
    self.assertAllClose(new_scores, [expected_scores], atol=1e-6)
    self.assertEqual(new_ids.dtype, np.int64)
    self.assertEqual(new_scores.dtype, np.float32)

  def test_k_zero_and_m_zero(self):
    ids, scores = exact_search.exact_search(self.QUERY, self.DB, 5)
    # K = 0: r = x, s1 = the initial cosine; q_exp = x0 (top 1), s2 = x0 . x:
    # final x0 (0.8 + 1) / 2 = 0.9, x1 (0.64 + 0.8) / 2 = 0.72, x4 0.3, x2 0.54.
    new_ids, new_scores = superglobal.superglobal_rerank(
      self.QUERY, self.DB, ids, scores, m=4, k=0, beta=0.5
    )
    self.assertAllEqual(new_ids, [[0, 1, 2, 4, 3]])
    self.assertAllClose(new_scores, [[0.9, 0.72, 0.54, 0.3, 0.0]], atol=1e-6)
    unchanged = superglobal.superglobal_rerank(self.QUERY, self.DB, ids, scores, m=0)
    self.assertAllEqual(unchanged[0], ids)
    self.assertAllEqual(unchanged[1], scores)

  def test_ties_take_the_earlier_candidate_and_negative_cosines_weigh_nothing(self):
    # a's two neighbours b and c are equally similar (0.6); d is opposite to a.
    a, b, c, d = [1, 0], [0.6, 0.8], [0.6, -0.8], [-1, 0]
    candidates = np.array([[a, b, c, d], [a, c, b, d]], np.float32)
    valid = np.ones([2, 4], bool)
    refined = superglobal.refine_candidates(candidates, valid, 1, 0.5)
    # K = 1: the tie goes to whichever of b, c ranks first: (a + 0.3 b) / 1.3.
    self.assertAllClose(refined[0, 0], [1.18 / 1.3, 0.24 / 1.3], atol=1e-6)
    self.assertAllClose(refined[1, 0], [1.18 / 1.3, -0.24 / 1.3], atol=1e-6)
    # d's neighbours all have negative cosine: weight 0 each, r_d = d.
    refined = superglobal.refine_candidates(candidates, valid, 3, 0.5)
    self.assertAllClose(refined[0, 3], d)


class RerankTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.db = _unit(rng.standard_normal((400, 16)))
    self.queries = _unit(self.db[rng.integers(0, 400, 9)] + 0.5 * rng.standard_normal((9, 16)))

  def test_equals_a_per_query_loop(self):
    ids, scores = exact_search.exact_search(self.queries, self.db, 120)
    expected = _per_query_loop(self.queries, self.db, ids, 50, 9, 0.15)
    for query_block in (1, 4, 32):
      new_ids, new_scores = superglobal.superglobal_rerank(
        self.queries, self.db, ids, scores, m=50, k=9, beta=0.15, query_block=query_block
      )
      self.assertAllEqual(new_ids, expected, msg=f"query_block {query_block}")
      # Beyond M: untouched; within M: the same candidates, re-ordered.
      self.assertAllEqual(new_ids[:, 50:], ids[:, 50:])
      self.assertAllClose(new_scores[:, 50:], scores[:, 50:])
      self.assertAllEqual(np.sort(new_ids[:, :50]), np.sort(ids[:, :50]))
      self.assertTrue(np.all(np.diff(new_scores[:, :50], axis=1) <= 0))
    self.assertGreater(np.mean(new_ids[:, :50] != ids[:, :50]), 0.5)
    # Unnormalised inputs are normalised first.
    scaled = superglobal.superglobal_rerank(
      3 * self.queries, 2 * self.db, ids, scores, m=50, k=9, beta=0.15
    )
    self.assertAllEqual(scaled[0], expected)

  def test_m_larger_than_the_database_and_padding(self):
    db = self.db[:7]
    ids, scores = exact_search.exact_search(self.queries, db, 10)  # 3 columns of padding
    self.assertAllEqual(ids[:, 7:], np.full([9, 3], -1))
    new_ids, new_scores = superglobal.superglobal_rerank(self.queries, db, ids, scores, m=400)
    self.assertAllEqual(new_ids[:, 7:], np.full([9, 3], -1))
    self.assertTrue(np.all(np.isneginf(new_scores[:, 7:])))
    self.assertAllEqual(new_ids[:, :7], _per_query_loop(self.queries, db, ids[:, :7], 7, 9, 0.15))
    # Padding inside the top-M of one query only (an approximate index found fewer).
    ragged_ids, ragged_scores = ids[:, :7].copy(), scores[:, :7].copy()
    ragged_ids[0, 4:], ragged_scores[0, 4:] = -1, -np.inf
    new_ids, _ = superglobal.superglobal_rerank(self.queries, db, ragged_ids, ragged_scores, m=7)
    self.assertAllEqual(new_ids[0, 4:], [-1, -1, -1])
    self.assertAllEqual(
      new_ids[0, :4], _per_query_loop(self.queries[:1], db, ids[:1, :4], 4, 9, 0.15)[0]
    )
    self.assertAllEqual(new_ids[1:], _per_query_loop(self.queries[1:], db, ids[1:, :7], 7, 9, 0.15))

  def test_approximate_index_and_distractor_rows(self):
    distractors = _unit(np.random.default_rng(1).standard_normal((600, 16)))
    database = np.concatenate([self.db, distractors])
    exact = exact_search.exact_search(self.queries, database, 100)
    expected = superglobal.superglobal_rerank(self.queries, database, *exact, m=60)
    index = indexes.make_index("faiss_ivf_flat", nlist=20, nprobe=20).build(database)
    approx = index.search(self.queries, 100)  # every list probed: the exact candidates
    result = superglobal.superglobal_rerank(self.queries, database, *approx, m=60)
    self.assertAllEqual(result[0], expected[0])
    self.assertAllClose(result[1], expected[1], atol=1e-5)
    # One probed list: fewer candidates, padded with -1 for some queries.
    index.set_search_params(nprobe=1)
    ids, scores = index.search(self.queries, 100)
    self.assertTrue(np.any(ids < 0))
    new_ids, _ = superglobal.superglobal_rerank(self.queries, database, ids, scores, m=60)
    for row, new_row in zip(ids, new_ids):
      self.assertAllEqual(np.sort(new_row[:60]), np.sort(row[:60]))
      self.assertAllEqual(new_row >= 0, row >= 0)

  def test_bad_arguments(self):
    ids, scores = exact_search.exact_search(self.queries, self.db, 5)
    with self.assertRaisesRegex(ValueError, "^superglobal m must be >= 0"):
      superglobal.superglobal_rerank(self.queries, self.db, ids, scores, m=-1)
    with self.assertRaisesRegex(ValueError, "^ids: 400 is outside the database of 400 rows$"):
      superglobal.superglobal_rerank(self.queries, self.db, ids + 400 - ids.max(), scores)
    with self.assertRaisesRegex(ValueError, r"^ids \(9, 5\) and scores \(9, 4\)"):
      superglobal.superglobal_rerank(self.queries, self.db, ids, scores[:, :4])
    with self.assertRaisesRegex(ValueError, "queries have dim 8 but the database has dim 16"):
      superglobal.superglobal_rerank(self.queries[:, :8], self.db, ids, scores)


def _landmarks(seed=7, dim=8):
  """Two landmarks of 5 tight views each; queries farther from their views than distractors.

  Returns:
    index [10, dim] (landmark 0: rows 0-4, landmark 1: rows 5-9), queries
    [2, dim], distractors [20, dim] (8 of them isolated near the queries).
  """
  rng = np.random.default_rng(seed)

  def around(centre, cosine, n):
    u = rng.standard_normal((n, dim))
    u = _unit(u - (u @ centre)[:, None] * centre)
    return _unit(cosine * centre + np.sqrt(1 - cosine**2) * u)

  centres = _unit(rng.standard_normal((2, dim)))
  queries = np.concatenate([around(c, 0.75, 1) for c in centres])
  index = np.concatenate([around(c, 0.92, 5) for c in centres])
  distractors = np.concatenate(
    [around(queries[0], 0.7, 4), around(queries[1], 0.7, 4), _unit(rng.standard_normal((12, dim)))]
  )
  return index, queries, distractors


class PerformRetrievalTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    index, queries, distractors = _landmarks()
    self.index, self.queries, self.distractors = index, queries, distractors
    self.imlist = [f"db{i}" for i in range(10)]
    self.features = os.path.join(self.root, "features")
    os.makedirs(self.features)
    for name, vector in zip(self.imlist + ["q0", "q1"], np.concatenate([index, queries])):
      datum_io.write_to_file(os.path.join(self.features, name + ".dolg_global"), vector)
    self.shard = os.path.join(self.root, "distractors.npz")
    np.savez(self.shard, ids=np.array([f"x{i}" for i in range(20)]), descriptors=distractors)
    # Three easy and two hard views per landmark.
    gnd = [
      {"easy": [0, 1, 2], "hard": [3, 4], "junk": []},
      {"easy": [5, 6, 7], "hard": [8, 9], "junk": []},
    ]
    self.gnd = os.path.join(self.root, "gnd_test.pkl")
    with open(self.gnd, "wb") as f:
      pickle.dump({"imlist": self.imlist, "qimlist": ["q0", "q1"], "gnd": gnd}, f)

  def _evaluate(self, config=None):
    return evaluation_lib.evaluate(self.gnd, self.features, self.features, self.shard, config)

  def test_before_and_after_lines_with_distractors(self):
    plain = self._evaluate()
    self.assertIsNone(plain.superglobal_results)
    self.assertNotIn("SuperGlobal", plain.summary)
    evaluation = self._evaluate(_superglobal_config(400))
    self.assertEqual(evaluation.num_database, 30)
    # The isolated distractors near the queries outrank some views globally;
    # SuperGlobal lifts every view above them.
    for protocol in ("easy", "medium", "hard"):
      self.assertAllClose(
        evaluation.global_results[protocol].mean_ap, plain.results[protocol].mean_ap
      )
      self.assertLess(evaluation.global_results[protocol].mean_ap, 0.8)
      self.assertAllClose(evaluation.superglobal_results[protocol].mean_ap, 1.0)
    self.assertIs(evaluation.results, evaluation.superglobal_results)
    self.assertGreater(evaluation.superglobal_ms_per_query, 0)
    lines = evaluation.summary.splitlines()
    self.assertEqual(lines[0], "before SuperGlobal re-ranking:")
    self.assertStartsWith(lines[1], ">> test: mAP E: ")
    self.assertRegex(
      lines[3], r"^after SuperGlobal re-ranking \(M=400, K=9, beta=0.15; [0-9.]+ ms/query\):$"
    )
    self.assertEqual(lines[4], ">> test: mAP E: 100.00, M: 100.00, H: 100.00")
    self.assertLen(lines, 6)
    # The ranking kept (num_ranked = 5) is cut after re-ranking the top M.
    cut = self._evaluate(_superglobal_config(400, num_ranked=5))
    self.assertAllClose(cut.superglobal_results["medium"].mean_ap, 1.0)
    self.assertLess(cut.global_results["medium"].mean_ap, 0.8)
    # Without the distractors there is nothing to fix.
    alone = evaluation_lib.evaluate(
      self.gnd, self.features, self.features, config=_superglobal_config(400)
    )
    self.assertAllClose(alone.global_results["medium"].mean_ap, 1.0)
    self.assertAllClose(alone.results["medium"].mean_ap, 1.0)

  def test_combinations(self):
    with self.assertRaisesRegex(
      ValueError, "^superglobal_m=400 cannot be combined with qe_n=1 / dba_n=0: "
    ):
      self._evaluate(
        _superglobal_config(400, query_expansion=query_expansion.QueryExpansionConfig(qe_n=1))
      )
    with self.assertRaisesRegex(ValueError, "^superglobal_beta must be >= 0, got -1"):
      self._evaluate(
        retrieval_config.RetrievalConfig(superglobal=superglobal.SuperGlobalConfig(m=400, beta=-1))
      )
    # Geometric verification re-ranks the SuperGlobal ranking (local features
    # are mocked: rerank_protocols records what it is given).
    for name in self.imlist + ["q0", "q1"]:
      open(os.path.join(self.features, name + rerank.LOCAL_SUFFIX), "w").close()
    seen = []

    def fake_rerank_protocols(ranks, gt, *args, **kwargs):
      seen.append(ranks)
      return evaluation_lib.metrics.evaluate_revisited(ranks, gt)

    with mock.patch.object(rerank, "rerank_protocols", fake_rerank_protocols):
      evaluation = self._evaluate(
        _superglobal_config(
          20,
          use_geometric_verification=True,
          geometric_verification=geometric_verification.GeometricVerificationConfig(top_k=10),
        )
      )
    database = np.concatenate([self.index, self.distractors])
    expected = superglobal.superglobal_rerank(
      self.queries, database, *exact_search.exact_search(self.queries, database, 30), m=20
    )[0]
    self.assertAllEqual(seen[0], expected)
    lines = evaluation.summary.splitlines()
    self.assertEqual(
      [line.split(" (")[0] for line in lines if not line.startswith(">>")],
      [
        "before SuperGlobal re-ranking:",
        "after SuperGlobal re-ranking",
        "after geometric verification",
      ],
    )

  def test_command(self):
    common = [
      f"--dataset_file_path={self.gnd}",
      f"--query_features_dir={self.features}",
      f"--index_features_dir={self.features}",
      f"--distractor_features={self.shard}",
    ]
    result = testutil.run_module(
      "dolg_tf.retrieval.perform_retrieval", *common, "--superglobal_m=400", timeout=120
    )
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("before SuperGlobal re-ranking:", result.stdout)
    self.assertRegex(result.stdout, r"after SuperGlobal re-ranking \(M=400, K=9, beta=0.15; ")
    self.assertIn(">> test: mAP E: 100.00, M: 100.00, H: 100.00", result.stdout)
    result = testutil.run_module(
      "dolg_tf.retrieval.perform_retrieval",
      *common,
      "--superglobal_m=400",
      "--dba_n=2",
      timeout=120,
    )
    self.assertEqual(result.returncode, 2)
    self.assertEqual(
      result.stderr.strip().splitlines(),
      [
        "perform_retrieval: error: --superglobal_m=400 cannot be combined with qe_n=0 / "
        "dba_n=2: SuperGlobal does its own query expansion and database-side augmentation "
        "(set qe_n=0 and dba_n=0)"
      ],
    )


if __name__ == "__main__":
  tf.test.main()
