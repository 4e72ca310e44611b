"""Tests for DELG* binarised local descriptors."""

import numpy as np
import tensorflow as tf

from dolg_tf.io import binarize, datum_io
from dolg_tf.retrieval import geometric_verification


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


class BinarizeTest(tf.test.TestCase):
  def test_pack_unpack_round_trip(self):
    x = np.random.default_rng(0).normal(size=[10, 20]).astype(np.float32)
    packed = binarize.binarize(x)
    self.assertEqual(packed.dtype, np.uint8)
    self.assertEqual(packed.shape, (10, 3))  # ceil(20 / 8)
    self.assertAllEqual(binarize.unpack(packed, 20), (x > 0).astype(np.uint8))
    # Stored as uint32 byte values in a DatumProto, and back.
    stored = datum_io.parse_array(datum_io.serialize_array(binarize.to_stored(packed[0])))
    self.assertEqual(stored.dtype, np.uint32)
    self.assertAllEqual(binarize.as_packed(stored), packed[0])
    with self.assertRaisesRegex(ValueError, "<= 255"):
      binarize.as_packed(np.array([256], np.uint32))
    with self.assertRaisesRegex(ValueError, "unsigned"):
      binarize.as_packed(np.array([1.0]))

  def test_hamming_distance_counts_differing_signs(self):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=[7, 37]), rng.normal(size=[5, 37])
    expected = np.array([[np.sum((u > 0) != (v > 0)) for v in b] for u in a])
    distances = binarize.hamming_distance(binarize.binarize(a), binarize.binarize(b))
    self.assertAllEqual(distances, expected)
    self.assertAllEqual(
      binarize.hamming_distance_lut(binarize.binarize(a), binarize.binarize(b)), expected
    )
    self.assertAllEqual(np.diag(binarize.hamming_distance(*[binarize.binarize(a)] * 2)), [0] * 7)

  def test_binary_matching_agrees_with_float_matching(self):
    # 150 database points; 150 queries are noisy copies of a permutation of
    # them (true matches) and 50 queries are unrelated (should not match).
    rng = np.random.default_rng(2)
    dim = 128
    database = _unit(rng.normal(size=[150, dim]))
    perm = rng.permutation(150)
    copies = _unit(database[perm] + rng.normal(scale=0.03, size=[150, dim]))
    queries = np.concatenate([copies, _unit(rng.normal(size=[50, dim]))]).astype(np.float32)
    float_matches = geometric_verification.match_features(queries, database.astype(np.float32), 0.8)
    threshold = binarize.hamming_threshold_for_l2(0.8, dim)
    binary_matches = geometric_verification.match_features(
      binarize.binarize(queries), binarize.binarize(database), threshold
    )

    def as_map(matches):
      out = np.full([len(queries)], -1)
      out[matches[:, 0]] = matches[:, 1]
      return out

    float_map, binary_map = as_map(float_matches), as_map(binary_matches)
    self.assertAllEqual(float_map[:150], perm)  # float matching is right on this data
    # Tolerance: Hamming and float NN (or both "no match") agree on >= 90% of queries.
    self.assertGreaterEqual(np.mean(float_map == binary_map), 0.9)
    self.assertAllEqual(binary_map[150:], [-1] * 50)

  def test_match_binary_equals_reference_with_many_ties(self):
    # 16-bit codes with few set bits: most rows of a have several nearest rows
    # of b at the same distance (and equal first / second distances), so the
    # lowest-index tie-breaking of the argmin reference is exercised.
    rng = np.random.default_rng(3)
    tied_rows = 0
    for trial in range(60):
      width = [1, 2, 2, 3, 16][trial % 5]
      num_a, num_b = int(rng.integers(1, 400)), int(rng.integers(1, 1500))
      density = 0.1 if width < 16 else 0.5
      a = np.packbits(rng.random([num_a, 8 * width]) < density, axis=1)
      b = np.packbits(rng.random([num_b, 8 * width]) < density, axis=1)
      distances = binarize.hamming_distance(a, b)
      tied_rows += int(np.sum(np.sum(distances == distances.min(1, keepdims=True), axis=1) > 1))
      for max_distance in (0, 2, 8 * width // 4, 8 * width):
        for ratio in (None, 0.5, 0.8, 1.0, 1.5):
          expected = binarize.match_binary_reference(a, b, max_distance, ratio)
          actual = binarize.match_binary(a, b, max_distance, ratio)
          self.assertEqual(actual.dtype, np.int64)
          self.assertAllEqual(actual.reshape(-1, 2), expected.reshape(-1, 2))
    self.assertGreater(tied_rows, 1000)

  def test_match_binary_picks_lowest_index_among_equal_rows(self):
    rng = np.random.default_rng(4)
    b = rng.integers(0, 256, [50, 16], dtype=np.uint8)
    b[[7, 20, 41]] = b[3]  # four equal rows: 3 is the nearest of a copy of them
    a = np.concatenate([b[[3]], b[[41]], b[[12]]])
    self.assertAllEqual(binarize.match_binary(a, b, 0), [[0, 3], [1, 3], [2, 12]])
    # Equal first and second distances fail any ratio test (d1 < ratio * d2 needed).
    for ratio in (0.8, 1.0, 1.5):
      self.assertAllEqual(binarize.match_binary(a, b, 0, ratio), [[2, 12]])
      self.assertAllEqual(
        binarize.match_binary(a, b, 0, ratio), binarize.match_binary_reference(a, b, 0, ratio)
      )

  def test_match_binary_inputs_and_threads(self):
    import faiss  # noqa: PLC0415

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, [300, 16], dtype=np.uint8)
    b = rng.integers(0, 256, [200, 16], dtype=np.uint8)
    expected = binarize.match_binary_reference(a, b, 40, 0.9)
    # Stored uint32 bytes, non-contiguous views, any thread count.
    wide_b = np.repeat(b, 2, axis=1)[:, ::2]
    self.assertFalse(wide_b.flags.c_contiguous)
    previous = faiss.omp_get_max_threads()
    for num_threads in (None, 1, 2):
      actual = binarize.match_binary(
        binarize.to_stored(a), wide_b, 40, 0.9, num_threads=num_threads
      )
      self.assertAllEqual(actual, expected)
      self.assertEqual(faiss.omp_get_max_threads(), previous)
    # One row of b: no second nearest, the ratio test is skipped (as the reference).
    self.assertAllEqual(
      binarize.match_binary(a, b[:1], 60, 0.5), binarize.match_binary_reference(a, b[:1], 60, 0.5)
    )
    self.assertEqual(binarize.match_binary(a[:0], b, 40).shape, (0, 2))
    self.assertEqual(binarize.match_binary(a, b[:0], 40, 0.8).shape, (0, 2))
    self.assertAllEqual(
      binarize.match_binary(a[0], b, 128), binarize.match_binary_reference(a[0], b, 128)
    )
    with self.assertRaisesRegex(ValueError, "widths differ"):
      binarize.match_binary(a, b[:, :8], 40)


if __name__ == "__main__":
  tf.test.main()
