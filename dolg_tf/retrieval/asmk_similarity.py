"""Similarity of aggregated local features (VLAD, ASMK, ASMK*) as DELF defines it.

    similarity = AggregatedSimilarity(aggregation_config)
    s = similarity.compare(descriptors_1, descriptors_2, words_1, words_2)

The semantics are those of DELF's feature_aggregation_similarity
(SimilarityAggregatedRepresentation), for one pair of images:

  VLAD    the inner product of the two aggregated vectors.
  ASMK    sum, over the visual words the two images share, of
          sigma(<r1(w), r2(w)>), r(w) the image's aggregated residual of word
          w (feature_dimensionality values per word).
  ASMK*   the same with the residuals binarised (one bit per dimension, packed
          8 per uint8 as np.packbits does): the per-word inner product is
          1 - 2 h / (min(feature_dimensionality, 8) * bytes per word), h the
          Hamming distance (popcount of the XOR) of the two packed rows.

  sigma(u) = sign(u) |u|^alpha if u > tau, else 0 (the selectivity function).

With use_l2_normalization the ASMK / ASMK* sum is divided by
sqrt(n1 * n2), n the number of visual words of each image. This is DELF's
normalisation: the images' self-similarities when every word's residual has
unit norm (ASMK: the aggregator L2-normalises them; ASMK*: a row compared
with itself gives 1, and sigma(1) = 1). An image without visual words has
similarity -1.0 to everything (DELF's convention), whatever the other side.

The per-word functions (`selectivity`, `binary_inner_products`) work on
arrays of rows, so the inverted file (inverted_file.py) scores whole posting
lists with them.
"""

import numpy as np

from dolg_tf.io.aggregation_config_io import ASMK, ASMK_STAR, TYPES, VLAD  # noqa: F401

# Number of set bits of every byte value.
_POPCOUNT = np.array([bin(n).count("1") for n in range(256)], dtype=np.int32)
EMPTY_SIMILARITY = -1.0


def selectivity(values, alpha: float, tau: float):
  """sigma(u) = sign(u) |u|^alpha where u > tau, 0 elsewhere (scalar or array)."""
  values = np.asarray(values, dtype=np.float64)
  above = values > tau
  out = np.zeros_like(values)
  out[above] = np.sign(values[above]) * np.power(np.abs(values[above]), alpha)
  return out if out.ndim else float(out)


def hamming_distances(rows_1: np.ndarray, rows_2: np.ndarray) -> np.ndarray:
  """Popcount of the XOR of packed uint8 rows [N, B] (broadcasting), summed per row."""
  return _POPCOUNT[np.bitwise_xor(rows_1, rows_2)].sum(axis=-1)


def binary_inner_products(
  rows_1: np.ndarray, rows_2: np.ndarray, feature_dimensionality: int
) -> np.ndarray:
  """ASMK*'s per-word inner product of packed uint8 rows [..., B] (module doc)."""
  num_bytes = rows_1.shape[-1]
  total_bits = min(int(feature_dimensionality), 8) * num_bytes
  return 1.0 - 2.0 * hamming_distances(rows_1, rows_2) / total_bits


class AggregatedSimilarity:
  """DELF's similarity of two aggregated representations (module doc).

  Args:
    config: an AggregationConfig (aggregation_type, feature_dimensionality,
      use_l2_normalization, alpha, tau are read; the index's config, as DELF
      uses it).

  Raises:
    ValueError: an aggregation type other than VLAD, ASMK or ASMK_STAR.
  """

  def __init__(self, config):
    self.aggregation_type = config.aggregation_type
    if self.aggregation_type not in TYPES:
      raise ValueError(f"aggregation_type: invalid value {self.aggregation_type}")
    self.feature_dimensionality = int(config.feature_dimensionality)
    self.use_l2_normalization = bool(config.use_l2_normalization)
    self.alpha = float(config.alpha)
    self.tau = float(config.tau)

  @property
  def binarized(self) -> bool:
    return self.aggregation_type == ASMK_STAR

  def word_similarities(self, rows_1: np.ndarray, rows_2: np.ndarray) -> np.ndarray:
    """sigma of the per-word inner products of matching rows [N, d] (ASMK / ASMK*)."""
    if self.binarized:
      inner = binary_inner_products(rows_1, rows_2, self.feature_dimensionality)
    else:
      inner = np.einsum("nd,nd->n", rows_1.astype(np.float64), rows_2.astype(np.float64))
    return selectivity(inner, self.alpha, self.tau)

  def normalizer(self, num_words_1, num_words_2):
    """What the ASMK / ASMK* sum is divided by (1 without L2 normalisation)."""
    if not self.use_l2_normalization:
      return np.ones_like(np.asarray(num_words_1 * num_words_2, dtype=np.float64))
    return np.sqrt(np.asarray(num_words_1, np.float64) * np.asarray(num_words_2, np.float64))

  def rows(self, descriptors: np.ndarray, num_words: int, which: str) -> np.ndarray:
    """The aggregated vector of `num_words` words as [num_words, d] rows (checked)."""
    descriptors = np.asarray(descriptors)
    if self.binarized:
      if descriptors.dtype != np.uint8:
        raise ValueError(f"ASMK* descriptors {which} must be uint8, got {descriptors.dtype}")
      if descriptors.size % num_words:
        raise ValueError(
          f"ASMK* descriptors {which}: {descriptors.size} bytes for {num_words} visual words"
        )
    elif descriptors.size != num_words * self.feature_dimensionality:
      raise ValueError(
        f"aggregated descriptors {which}: {descriptors.size} values for {num_words} visual "
        f"words of dimension {self.feature_dimensionality}"
      )
    return descriptors.reshape(num_words, -1)

  def compare(self, descriptors_1, descriptors_2, words_1=None, words_2=None) -> float:
    """The similarity of two images (module doc); the larger, the more similar.

    Args:
      descriptors_1 / descriptors_2: 1-D aggregated vectors (uint8 for ASMK*).
      words_1 / words_2: ASMK / ASMK*: 1-D sorted visual word ids of the rows.

    Raises:
      ValueError: sizes that do not fit the words or the dimensionality, or
        ASMK* descriptors that are not uint8, or differing bytes per word.
    """
    if self.aggregation_type == VLAD:
      return float(np.dot(descriptors_1, descriptors_2))
    words_1, words_2 = np.asarray(words_1), np.asarray(words_2)
    if not len(words_1) or not len(words_2):
      return EMPTY_SIMILARITY
    rows_1 = self.rows(descriptors_1, len(words_1), "1")
    rows_2 = self.rows(descriptors_2, len(words_2), "2")
    if rows_1.shape[1] != rows_2.shape[1]:
      raise ValueError(f"ASMK* bytes per word differ: {rows_1.shape[1]} vs {rows_2.shape[1]}")
    _, index_1, index_2 = np.intersect1d(words_1, words_2, assume_unique=True, return_indices=True)
    total = float(self.word_similarities(rows_1[index_1], rows_2[index_2]).sum())
    return total / float(self.normalizer(len(words_1), len(words_2)))
