"""Tests for dolg_tf.retrieval.inverted_file: equal to pairwise scoring, restricted mode, files."""

import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.protos import aggregation_config_pb2
from dolg_tf.retrieval import asmk_similarity, inverted_file

Config = aggregation_config_pb2.AggregationConfig


def _similarity(kind, dim=16, l2=True, alpha=3.0, tau=0.0):
  return asmk_similarity.AggregatedSimilarity(
    Config(
      aggregation_type=kind,
      feature_dimensionality=dim,
      alpha=alpha,
      tau=tau,
      use_l2_normalization=l2,
    )
  )


def _random_image(rng, kind, dim, codebook, empty=False):
  if kind == asmk_similarity.VLAD:
    vector = rng.normal(size=dim * codebook).astype(np.float32)
    return vector / np.linalg.norm(vector), None
  num = 0 if empty else int(rng.integers(1, codebook // 2))
  words = np.sort(rng.choice(codebook, size=num, replace=False))
  rows = rng.normal(size=(num, dim)).astype(np.float32)
  rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)
  if kind == asmk_similarity.ASMK_STAR:
    return np.packbits(rows > 0, axis=1).reshape(-1), words
  return rows.reshape(-1), words


class InvertedFileTest(parameterized.TestCase, tf.test.TestCase):
  def _data(self, kind, num_images=30, dim=16, codebook=24, seed=0):
    rng = np.random.default_rng(seed)
    database = [_random_image(rng, kind, dim, codebook, empty=(i == 7)) for i in range(num_images)]
    queries = [_random_image(rng, kind, dim, codebook) for _ in range(4)]
    queries.append(_random_image(rng, kind, dim, codebook, empty=True))
    return database, queries

  @parameterized.product(
    kind=(asmk_similarity.ASMK, asmk_similarity.ASMK_STAR, asmk_similarity.VLAD),
    l2=(True, False),
  )
  def test_equals_pairwise_scoring(self, kind, l2):
    similarity = _similarity(kind, l2=l2, alpha=1.0 if kind == asmk_similarity.VLAD else 3.0)
    database, queries = self._data(kind)
    ivf = inverted_file.InvertedFile.build(similarity, database)
    for descriptors, words in queries:
      expected = [similarity.compare(descriptors, d, words, w) for d, w in database]
      np.testing.assert_allclose(ivf.scores(descriptors, words), expected, rtol=1e-5, atol=1e-6)

  def test_empty_image_and_query_score_minus_one(self):
    similarity = _similarity(asmk_similarity.ASMK_STAR)
    database, queries = self._data(asmk_similarity.ASMK_STAR)
    ivf = inverted_file.InvertedFile.build(similarity, database)
    self.assertEqual(ivf.scores(*queries[0])[7], -1.0)
    np.testing.assert_array_equal(ivf.scores(*queries[-1]), -np.ones(len(database)))

  def test_only_posting_lists_of_query_words_are_touched(self):
    similarity = _similarity(asmk_similarity.ASMK)
    database, _ = self._data(asmk_similarity.ASMK)
    ivf = inverted_file.InvertedFile.build(similarity, database)
    words = np.array([2, 5])
    entries, _ = ivf._entries(words)
    expected = np.concatenate([np.arange(ivf.offsets[w], ivf.offsets[w + 1]) for w in words])
    np.testing.assert_array_equal(entries, expected)
    self.assertLess(len(entries), len(ivf.images))

  def test_words_beyond_the_database_are_ignored(self):
    similarity = _similarity(asmk_similarity.ASMK, dim=2, alpha=1.0, l2=False)
    ivf = inverted_file.InvertedFile.build(similarity, [(np.array([1.0, 0.0]), [0])])
    scores = ivf.scores(np.array([1.0, 0.0, 0.0, 1.0]), [0, 99])
    np.testing.assert_allclose(scores, [1.0])

  def test_search_top_k(self):
    similarity = _similarity(asmk_similarity.ASMK)
    database, queries = self._data(asmk_similarity.ASMK)
    ivf = inverted_file.InvertedFile.build(similarity, database)
    scores = ivf.scores(*queries[0])
    ranks, top = ivf.search(*queries[0], k=5)
    np.testing.assert_array_equal(ranks, np.argsort(-scores, kind="stable")[:5])
    np.testing.assert_allclose(top, scores[ranks])

  @parameterized.parameters(asmk_similarity.ASMK, asmk_similarity.ASMK_STAR, asmk_similarity.VLAD)
  def test_restricted_mode_scores_the_candidates(self, kind):
    similarity = _similarity(kind)
    database, queries = self._data(kind)
    ivf = inverted_file.InvertedFile.build(similarity, database)
    candidates = np.array([12, 3, 7, 25, 0])
    full = ivf.scores(*queries[1])
    np.testing.assert_allclose(ivf.scores(*queries[1], candidates=candidates), full[candidates])

  @parameterized.parameters(asmk_similarity.ASMK, asmk_similarity.ASMK_STAR)
  def test_save_load_round_trip(self, kind):
    similarity = _similarity(kind)
    database, queries = self._data(kind)
    ivf = inverted_file.InvertedFile.build(similarity, database)
    path = os.path.join(self.create_tempdir().full_path, "sub", "index.ivf.npz")
    ivf.save(path)
    loaded = inverted_file.InvertedFile.load(path, similarity)
    np.testing.assert_array_equal(loaded.scores(*queries[0]), ivf.scores(*queries[0]))
    self.assertEqual(
      loaded.rows.dtype, np.uint8 if kind == asmk_similarity.ASMK_STAR else np.float32
    )
    self.assertEqual(loaded.nbytes(), ivf.nbytes())
    with self.assertRaisesRegex(ValueError, "expected"):
      inverted_file.InvertedFile.load(path, _similarity(asmk_similarity.VLAD))

  def test_corrupt_file_is_named(self):
    path = os.path.join(self.create_tempdir().full_path, "bad.npz")
    with open(path, "wb") as f:
      f.write(b"not a zip")
    with self.assertRaisesRegex(ValueError, "bad.npz: not an inverted file"):
      inverted_file.InvertedFile.load(path, _similarity(asmk_similarity.ASMK))

  def test_nbytes(self):
    similarity = _similarity(asmk_similarity.ASMK_STAR, dim=16)
    ivf = inverted_file.InvertedFile.build(
      similarity, [(np.zeros(4, np.uint8), [1, 3]), (np.zeros(2, np.uint8), [3])]
    )
    sizes = ivf.nbytes()
    # 3 entries of 2 bytes, 3 int32 image ids, 5 int64 offsets, 2 int32 counts.
    self.assertEqual(sizes["rows"], 6)
    self.assertEqual(sizes["images"], 12)
    self.assertEqual(sizes["offsets"], 40)
    self.assertEqual(sizes["total"], 6 + 12 + 40 + 8)


if __name__ == "__main__":
  tf.test.main()
