"""Tests for DELG* binarised local descriptors."""

import numpy as np
import tensorflow as tf

from dolg_tf.extraction import binarize
from dolg_tf.io import datum_io
from dolg_tf.retrieval import rerank


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
    float_matches = rerank.match_features(queries, database.astype(np.float32), 0.8)
    threshold = binarize.hamming_threshold_for_l2(0.8, dim)
    binary_matches = rerank.match_features(
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


if __name__ == "__main__":
  tf.test.main()
