"""Tests for dolg_tf.retrieval.asmk_similarity on hand-computed cases (DELF semantics)."""

import math

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.protos import aggregation_config_pb2
from dolg_tf.retrieval import asmk_similarity

Config = aggregation_config_pb2.AggregationConfig


def _similarity(kind, dim=2, alpha=3.0, tau=0.0, l2=True):
  return asmk_similarity.AggregatedSimilarity(
    Config(
      aggregation_type=kind,
      feature_dimensionality=dim,
      alpha=alpha,
      tau=tau,
      use_l2_normalization=l2,
    )
  )


class SelectivityTest(parameterized.TestCase):
  @parameterized.parameters(
    # sign(u)|u|^alpha above tau, 0 at or below it.
    (0.5, 3.0, 0.0, 0.125),
    (0.2, 3.0, 0.0, 0.008),
    (-0.5, 3.0, 0.0, 0.0),
    (-0.5, 3.0, -1.0, -0.125),
    (0.5, 1.0, 0.5, 0.0),  # strictly above tau
    (0.9, 2.0, 0.5, 0.81),
  )
  def test_scalar(self, u, alpha, tau, expected):
    self.assertAlmostEqual(asmk_similarity.selectivity(u, alpha, tau), expected)

  def test_array(self):
    np.testing.assert_allclose(
      asmk_similarity.selectivity(np.array([-0.5, 0.2, 0.5]), 3.0, -1.0), [-0.125, 0.008, 0.125]
    )


class AsmkTest(tf.test.TestCase):
  # Image 1: words 1, 3; image 2: words 3, 5, 7. Common word 3: <(.6,.8), (.8,.6)> = 0.96.
  words_1 = np.array([1, 3])
  rows_1 = np.array([1, 0, 0.6, 0.8], np.float32)
  words_2 = np.array([3, 5, 7])
  rows_2 = np.array([0.8, 0.6, 1, 0, 0, 1], np.float32)

  def test_one_common_word_normalized(self):
    got = _similarity(asmk_similarity.ASMK).compare(
      self.rows_1, self.rows_2, self.words_1, self.words_2
    )
    self.assertAlmostEqual(got, 0.96**3 / math.sqrt(2 * 3), places=6)

  def test_without_normalization_and_alpha(self):
    got = _similarity(asmk_similarity.ASMK, alpha=1.0, l2=False).compare(
      self.rows_1, self.rows_2, self.words_1, self.words_2
    )
    self.assertAlmostEqual(got, 0.96, places=6)

  def test_tau_removes_the_match(self):
    got = _similarity(asmk_similarity.ASMK, tau=0.97).compare(
      self.rows_1, self.rows_2, self.words_1, self.words_2
    )
    self.assertEqual(got, 0.0)

  def test_two_common_words(self):
    # Words 1 and 3 shared: <(1,0),(0.6,0.8)> = 0.6 and <(.6,.8),(0,1)> = 0.8.
    rows_2 = np.array([0.6, 0.8, 0, 1], np.float32)
    got = _similarity(asmk_similarity.ASMK, alpha=2.0).compare(
      self.rows_1, rows_2, self.words_1, np.array([1, 3])
    )
    self.assertAlmostEqual(got, (0.36 + 0.64) / 2.0, places=6)

  def test_empty_side_is_minus_one(self):
    similarity = _similarity(asmk_similarity.ASMK)
    empty = np.zeros(0, np.float32)
    self.assertEqual(similarity.compare(empty, self.rows_2, [], self.words_2), -1.0)
    self.assertEqual(similarity.compare(self.rows_1, empty, self.words_1, []), -1.0)

  def test_wrong_size_is_refused(self):
    with self.assertRaisesRegex(ValueError, "dimension 2"):
      _similarity(asmk_similarity.ASMK).compare(
        self.rows_1[:3], self.rows_2, self.words_1, self.words_2
      )

  def test_vlad_is_the_inner_product(self):
    got = _similarity(asmk_similarity.VLAD).compare(np.array([1.0, 2.0]), np.array([3.0, -1.0]))
    self.assertAlmostEqual(got, 1.0)


class AsmkStarTest(tf.test.TestCase):
  def test_hamming_one_byte(self):
    # 11110000 vs 11000000: 2 differing bits of 8 -> 1 - 2*2/8 = 0.5; sigma = 0.5^3.
    similarity = _similarity(asmk_similarity.ASMK_STAR, dim=8)
    got = similarity.compare(
      np.array([0b11110000], np.uint8), np.array([0b11000000], np.uint8), [4], [4]
    )
    self.assertAlmostEqual(got, 0.125)

  def test_two_bytes_and_two_words(self):
    # dim 16: 16 bits per word. Word 2: 3 differing bits -> 1 - 6/16 = 0.625;
    # word 9: identical -> 1. Word 5 only in image 1. alpha 1, normalised by sqrt(3 * 2).
    similarity = _similarity(asmk_similarity.ASMK_STAR, dim=16, alpha=1.0)
    bits_1 = np.array([0xFF, 0x00, 0x12, 0x34, 0xAB, 0xCD], np.uint8)
    bits_2 = np.array([0xFE, 0x03, 0xAB, 0xCD], np.uint8)
    got = similarity.compare(bits_1, bits_2, [2, 5, 9], [2, 9])
    self.assertAlmostEqual(got, (0.625 + 1.0) / math.sqrt(6))

  def test_low_dimensional_descriptors_count_their_bits(self):
    # dim 4: packbits pads to one byte but only 4 bits count: 1010 vs 0110 -> 1 - 2*2/4 = 0.
    similarity = _similarity(asmk_similarity.ASMK_STAR, dim=4, alpha=1.0, tau=-2.0, l2=False)
    got = similarity.compare(
      np.array([0b10100000], np.uint8), np.array([0b01100000], np.uint8), [0], [0]
    )
    self.assertAlmostEqual(got, 0.0)

  def test_packbits_of_residual_signs(self):
    # The aggregator binarises residuals as r > 0, packed by np.packbits (DELF's ASMK*).
    residual_1 = np.array([0.3, -0.1, 0.2, 0.5, -0.4, -0.2, 0.1, 0.7])
    residual_2 = np.array([0.1, 0.2, 0.3, -0.5, -0.4, -0.2, 0.1, 0.7])  # 2 signs differ
    bits_1, bits_2 = (np.packbits(r > 0) for r in (residual_1, residual_2))
    got = _similarity(asmk_similarity.ASMK_STAR, dim=8, alpha=1.0, l2=False).compare(
      bits_1, bits_2, [0], [0]
    )
    self.assertAlmostEqual(got, 0.5)

  def test_float_bits_are_refused(self):
    with self.assertRaisesRegex(ValueError, "uint8"):
      _similarity(asmk_similarity.ASMK_STAR, dim=8).compare(
        np.array([3.0]), np.array([3], np.uint8), [0], [0]
      )

  def test_invalid_type(self):
    with self.assertRaisesRegex(ValueError, "aggregation_type"):
      _similarity(Config.INVALID)


def _reference(kind, dim, alpha, tau, l2, desc_1, desc_2, words_1, words_2):
  """DELF's merge loop restated with plain Python (two pointers, a per-byte bit count)."""
  if not len(words_1) or not len(words_2):
    return -1.0
  width = len(desc_1) // len(words_1)
  total, i, j = 0.0, 0, 0
  while i < len(words_1) and j < len(words_2):
    if words_1[i] == words_2[j]:
      row_1, row_2 = desc_1[i * width : (i + 1) * width], desc_2[j * width : (j + 1) * width]
      if kind == asmk_similarity.ASMK_STAR:
        h = sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(row_1, row_2))
        u = 1.0 - 2.0 * h / (min(dim, 8) * width)
      else:
        u = sum(float(a) * float(b) for a, b in zip(row_1, row_2))
      total += math.copysign(abs(u) ** alpha, u) if u > tau else 0.0
      i, j = i + 1, j + 1
    elif words_1[i] > words_2[j]:
      j += 1
    else:
      i += 1
  return total / math.sqrt(len(words_1) * len(words_2)) if l2 else total


class ReferenceTest(parameterized.TestCase):
  @parameterized.product(
    kind=(asmk_similarity.ASMK, asmk_similarity.ASMK_STAR),
    alpha_tau=((3.0, 0.0), (1.0, -0.5), (2.0, 0.2)),
    l2=(True, False),
  )
  def test_random_pairs_match_the_restated_loop(self, kind, alpha_tau, l2):
    alpha, tau = alpha_tau
    dim = 16
    similarity = _similarity(kind, dim=dim, alpha=alpha, tau=tau, l2=l2)
    rng = np.random.default_rng(int(kind) * 10 + int(l2))
    for _ in range(20):
      images = []
      for _ in range(2):
        words = np.sort(rng.choice(12, size=int(rng.integers(0, 8)), replace=False))
        rows = rng.normal(size=(len(words), dim)).astype(np.float32)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)
        if kind == asmk_similarity.ASMK_STAR:
          rows = np.packbits(rows > 0, axis=1)
        images.append((rows.reshape(-1), words))
      (desc_1, words_1), (desc_2, words_2) = images
      expected = _reference(kind, dim, alpha, tau, l2, desc_1, desc_2, words_1, words_2)
      got = similarity.compare(desc_1, desc_2, words_1, words_2)
      self.assertAlmostEqual(got, expected, places=5)


if __name__ == "__main__":
  tf.test.main()
