"""Tests for dolg_tf.retrieval's exact search, indexes (ScaNN, faiss) and expansion (QE / DBA)."""

import os
import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.retrieval import exact_search, indexes, metrics, query_expansion, scann_index
from dolg_tf.utils import arrays, cli


def _clustered(rng, num_clusters, size, dim, cosine, num_queries, distractors=0):
  """Unit vectors at `cosine` to random unit centres, plus random distractors.

  Returns:
    database [N, dim], database labels (-1 = distractor), queries, query labels.
  """
  centres = arrays.l2_normalize(rng.standard_normal((num_clusters, dim)))

  def members(labels):
    c = centres[labels]
    u = rng.standard_normal((labels.size, dim)).astype(np.float32)
    u = arrays.l2_normalize(u - np.sum(u * c, axis=1, keepdims=True) * c)
    return arrays.l2_normalize(cosine * c + np.sqrt(1 - cosine**2) * u)

  labels = np.repeat(np.arange(num_clusters), size)
  db = members(labels)
  if distractors:
    db = np.concatenate([db, arrays.l2_normalize(rng.standard_normal((distractors, dim)))])
    labels = np.concatenate([labels, np.full(distractors, -1)])
  query_labels = rng.integers(0, num_clusters, num_queries)
  return db, labels, members(query_labels), query_labels


class ExactSearchTest(tf.test.TestCase):
  def test_tiled_equals_full_matrix_top_k(self):
    rng = np.random.default_rng(0)
    db = rng.standard_normal((1013, 24)).astype(np.float32)
    queries = rng.standard_normal((61, 24)).astype(np.float32)
    full = queries @ db.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :13]
    for query_block, db_block in ((7, 97), (61, 1013), (1, 5), (1000, 300)):
      ids, scores = exact_search.exact_search(
        queries, db, 13, query_block=query_block, db_block=db_block, backend="numpy"
      )
      self.assertEqual(ids.dtype, np.int64)
      self.assertEqual(scores.dtype, np.float32)
      self.assertAllEqual(ids, expected, msg=f"blocks {query_block}x{db_block}")
      self.assertAllClose(scores, np.take_along_axis(full, expected, axis=1), atol=1e-5)
      self.assertTrue(np.all(np.diff(scores, axis=1) <= 0))

  def test_faiss_backend_equals_numpy(self):
    # Integer vectors: every inner product is exact in float32 whatever the
    # summation order, so both backends must return identical lists.
    rng = np.random.default_rng(5)
    db = rng.integers(-1000, 1001, (2000, 16)).astype(np.float32)
    for num_queries in (5, 45):  # faiss scans below 20 queries, uses BLAS above
      queries = rng.integers(-1000, 1001, (num_queries, 16)).astype(np.float32)
      for k in (1, 10, 100, 2500):  # 2500 > database: padded
        tiled = exact_search.exact_search(queries, db, k, backend="numpy", db_block=300)
        faiss_result = exact_search.exact_search(queries, db, k, backend="faiss")
        self.assertAllEqual(faiss_result[0], tiled[0], msg=f"{num_queries} queries, k={k}")
        self.assertAllEqual(faiss_result[1], tiled[1])
    auto = exact_search.exact_search(queries, db, 10)  # numpy by default
    self.assertAllEqual(auto[0], exact_search.exact_search(queries, db, 10, backend="faiss")[0])
    index = indexes.make_index("exact", backend="faiss").build(db)
    self.assertAllEqual(index.search(queries, 10)[0], auto[0])
    with self.assertRaisesRegex(ValueError, "backend must be one of"):
      exact_search.exact_search(queries, db, 10, backend="blas")

  def test_k_larger_than_database_is_padded(self):
    rng = np.random.default_rng(1)
    db = rng.standard_normal((4, 8))
    ids, scores = exact_search.exact_search(rng.standard_normal((3, 8)), db, 6, db_block=3)
    self.assertAllEqual(np.sort(ids[:, :4], axis=1), np.tile(np.arange(4), (3, 1)))
    self.assertAllEqual(ids[:, 4:], np.full((3, 2), -1))
    self.assertTrue(np.all(np.isneginf(scores[:, 4:])))

  def test_recall_at_k(self):
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[2, 1, 9, 9], [5, 0, 0, 0]])
    self.assertAllClose(indexes.recall_at_k(approx, exact, 2), (2 / 2 + 1 / 2) / 2)
    self.assertAllClose(indexes.recall_at_k(approx, exact, 4), (2 / 4 + 1 / 4) / 2)

  def test_exact_index_roundtrip(self):
    rng = np.random.default_rng(2)
    db = arrays.l2_normalize(rng.standard_normal((300, 16)))
    queries = arrays.l2_normalize(rng.standard_normal((10, 16)))
    index = indexes.make_index("exact", db_block=64).build(db)
    ids, scores = index.search(queries, 5)
    self.assertAllEqual(ids, exact_search.exact_search(queries, db, 5)[0])
    path = os.path.join(self.create_tempdir().full_path, "exact")
    index.save(path)
    loaded = indexes.load_index(path)
    self.assertAllEqual(loaded.search(queries, 5)[0], ids)
    self.assertEqual(index.memory_bytes(), db.nbytes)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "unknown index kind"):
      indexes.make_index("annoy")
    with self.assertRaisesRegex(ValueError, "nprobe"):
      indexes.make_index("scann", nprobe=3)
    with self.assertRaisesRegex(ValueError, "dim"):
      exact_search.exact_search(np.zeros((2, 3)), np.zeros((4, 5)), 1)
    with self.assertRaisesRegex(ValueError, "build"):
      indexes.make_index("exact").search(np.zeros((1, 3)), 1)
    with self.assertRaisesRegex(OSError, "index_meta.json"):
      indexes.load_index(self.create_tempdir().full_path)


_APPROX = (
  ("scann", "scann", dict(num_leaves=40, num_leaves_to_search=10, reorder=100)),
  ("ivf_flat", "faiss_ivf_flat", dict(nlist=40, nprobe=10)),
  ("ivf_pq_fast_scan", "faiss_ivf_pq", dict(nlist=40, nprobe=10, m=8, refine_k_factor=8)),
  (
    "ivf_pq_classic",
    "faiss_ivf_pq",
    dict(nlist=40, nprobe=10, m=8, nbits=5, fast_scan=False, refine_k_factor=8),
  ),
  ("hnsw", "faiss_hnsw", dict(m=16, ef_construction=40, ef_search=64)),
  (
    "scann_soar",
    "scann",
    dict(num_leaves=40, num_leaves_to_search=6, reorder=100, soar_lambda=1.5),
  ),
  ("ivf_hnsw_flat", "faiss_ivf_flat", dict(nlist=40, nprobe=10, coarse_hnsw_m=8)),
  (
    "ivf_hnsw_pq",
    "faiss_ivf_pq",
    dict(nlist=40, nprobe=10, m=8, refine_k_factor=8, coarse_hnsw_m=8),
  ),
)


class ApproximateIndexTest(tf.test.TestCase, parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rng = np.random.default_rng(3)
    cls.db, _, cls.queries, _ = _clustered(rng, 40, 60, 32, 0.8, 100)
    cls.exact_ids, _ = exact_search.exact_search(cls.queries, cls.db, 10)

  @parameterized.named_parameters(*_APPROX)
  def test_recall_and_save_load(self, kind, params):
    index = indexes.make_index(kind, **params).build(self.db)
    ids, scores = index.search(self.queries, 10)
    self.assertEqual(ids.shape, (100, 10))
    self.assertEqual(ids.dtype, np.int64)
    self.assertEqual(scores.dtype, np.float32)
    self.assertTrue(np.all(np.diff(scores, axis=1) <= 0))
    self.assertGreaterEqual(indexes.recall_at_k(ids, self.exact_ids, 10), 0.9)
    self.assertGreater(index.memory_bytes(), 0)

    tmp = self.create_tempdir().full_path
    path = os.path.join(tmp, "index")
    index.save(path)
    index.save(path)  # Overwriting an existing index works.
    self.assertEqual(sorted(os.listdir(tmp)), ["index"])  # No temp folders left.
    moved = os.path.join(tmp, "moved")
    shutil.move(path, moved)  # A saved index may be moved (ScaNN stores paths).
    loaded = indexes.load_index(moved)
    self.assertEqual(loaded.kind, kind)
    loaded_ids, loaded_scores = loaded.search(self.queries, 10)
    self.assertAllEqual(loaded_ids, ids)
    self.assertAllClose(loaded_scores, scores)

  def test_search_params_change_recall(self):
    index = indexes.make_index("faiss_ivf_flat", nlist=40, nprobe=1).build(self.db)
    low = indexes.recall_at_k(index.search(self.queries, 10)[0], self.exact_ids, 10)
    index.set_search_params(nprobe=40)  # All lists: exact.
    full = indexes.recall_at_k(index.search(self.queries, 10)[0], self.exact_ids, 10)
    self.assertAllClose(full, 1.0)
    self.assertLessEqual(low, full)
    with self.assertRaisesRegex(ValueError, "nlist"):
      index.set_search_params(nlist=3)
    # An HNSW coarse quantiser finds all nprobe lists (its efSearch follows nprobe).
    index = indexes.make_index("faiss_ivf_flat", nlist=40, nprobe=40, coarse_hnsw_m=4)
    index.build(self.db)
    ids, _ = index.search(self.queries, 10)
    self.assertAllClose(indexes.recall_at_k(ids, self.exact_ids, 10), 1.0)


_SCANN_WITHOUT_TF_OPS = """
import sys
import numpy as np
from dolg_tf.retrieval import indexes
db = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
db /= np.linalg.norm(db, axis=1, keepdims=True)  # unit rows: each row is its own nearest
index = indexes.make_index("scann", num_leaves=10).build(db)
index.save(sys.argv[1])
ids, _ = indexes.load_index(sys.argv[1]).search(db[:5], 3)
assert ids.shape == (5, 3) and ids.min() >= 0 and ids.max() < 300, ids
leftover = sorted(m for m in sys.modules if m == "scann" or m.startswith("scann."))
assert not leftover, leftover  # ScaNN's TF ops never loaded; nothing half-imported stays.
import scann  # The user's own import is complete.
assert scann.scann_ops_pybind.builder is not None and scann.ScannBuilder is not None
print("ok")
"""


class ScannImportTest(tf.test.TestCase):
  def test_missing_scann_is_a_one_line_user_error(self):
    scann_index._scann_numpy_api.cache_clear()
    self.addCleanup(scann_index._scann_numpy_api.cache_clear)
    without_scann = {k: v for k, v in sys.modules.items() if k.split(".")[0] != "scann"}
    with (
      mock.patch.dict(sys.modules, without_scann, clear=True),
      mock.patch.object(scann_index.importlib.util, "find_spec", return_value=None),
    ):
      with self.assertRaisesRegex(cli.UserError, "needs the scann package"):
        indexes.make_index("scann").build(np.eye(4, dtype=np.float32))

  def test_scann_index_without_scann_tf_ops_and_user_import_intact(self):
    index_dir = os.path.join(self.create_tempdir().full_path, "index")
    result = subprocess.run(
      [sys.executable, "-c", _SCANN_WITHOUT_TF_OPS, index_dir],
      capture_output=True,
      text=True,
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertEqual(result.stdout.strip(), "ok")
    # ScaNN 1.4's C++ INFO lines (and Abseil's preamble) are not shown without --verbose.
    self.assertNotIn("InitializeLog", result.stderr)
    self.assertNotRegex(result.stderr, r"(?m)^I\d{4} .*\.(cc|h):\d+\]")


class ExpansionTest(tf.test.TestCase):
  def _mean_ap(self, db, labels, queries, query_labels, **kwargs):
    ids, _ = query_expansion.search_with_expansion(queries, db, db.shape[0], **kwargs)
    gnd = [{"ok": np.flatnonzero(labels == label)} for label in query_labels]
    return metrics.compute_map(ids, gnd).mean_ap

  def test_qe_and_dba_raise_map(self):
    rng = np.random.default_rng(4)
    data = _clustered(rng, 20, 15, 64, 0.5, 40, distractors=300)
    base = self._mean_ap(*data)
    qe = self._mean_ap(*data, qe_n=3)
    dba = self._mean_ap(*data, dba_n=3)
    both = self._mean_ap(*data, qe_n=3, dba_n=3)
    self.assertGreater(qe, base + 0.01)
    self.assertGreater(dba, base + 0.01)
    self.assertGreater(both, max(qe, dba))

  def test_expansion_details(self):
    db = arrays.l2_normalize(np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]))
    q = np.array([[1.0, 0.0]])
    # n = 0: unchanged.
    self.assertAllClose(query_expansion.alpha_query_expansion(q, db, 0), q)
    # Neighbours of q: db0 (s = 1), db1 (s = 0.8). With alpha = 1 and n = 2:
    # q + 1 * db0 + 0.8 * db1 = (2.64, 0.48) -> normalised.
    expected = np.array([[2.64, 0.48]]) / np.hypot(2.64, 0.48)
    self.assertAllClose(
      query_expansion.alpha_query_expansion(q, db, 2, alpha=1.0), expected, atol=1e-6
    )
    # DBA with n = 1 excludes the item itself: db0 + 0.8 * db1 = (1.64, 0.48).
    augmented = query_expansion.database_side_augmentation(db, 1, alpha=1.0)
    self.assertAllClose(augmented[0], np.array([1.64, 0.48]) / np.hypot(1.64, 0.48), atol=1e-6)
    self.assertAllClose(np.linalg.norm(augmented, axis=1), np.ones(3), atol=1e-6)
    # Off by default.
    ids, _ = query_expansion.search_with_expansion(q, db, 3)
    self.assertAllEqual(ids, exact_search.exact_search(q, db, 3)[0])


if __name__ == "__main__":
  tf.test.main()
