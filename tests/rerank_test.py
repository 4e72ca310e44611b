"""Tests for DELG geometric verification and re-ranking."""

import dataclasses
import os
import pickle
from unittest import mock

import numpy as np
import tensorflow as tf

from dolg_tf.extraction import local_extractor
from dolg_tf.io import binarize, datum_io, feature_io
from dolg_tf.retrieval import evaluation as evaluation_lib
from dolg_tf.retrieval import geometric_verification, rerank, retrieval_config

# Affine map of (x, y) points: dst = A @ [x, y, 1].
_A = np.array([[0.9, -0.2, 15.0], [0.15, 1.1, -8.0]])


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _pair(rng, num_inliers=60, num_outliers=40, dim=32):
  """Query/index local features: inliers related by _A, plus random outliers."""
  n = num_inliers + num_outliers
  yx = rng.uniform(0, 200, size=[n, 2])
  xy = yx[:, ::-1]
  mapped_xy = xy @ _A[:, :2].T + _A[:, 2]
  mapped_xy[num_inliers:] = rng.uniform(0, 200, size=[num_outliers, 2])
  descriptors = _unit(rng.normal(size=[n, dim]))
  query = feature_io.LocalFeatures(
    yx.astype(np.float32), np.ones(n, np.float32), descriptors, np.ones(n, np.float32), np.zeros(n)
  )
  noisy = _unit(descriptors + rng.normal(scale=0.02, size=descriptors.shape))
  index = feature_io.LocalFeatures(
    mapped_xy[:, ::-1].astype(np.float32),
    np.ones(n, np.float32),
    noisy,
    np.ones(n, np.float32),
    np.zeros(n),
  )
  return query, index


def _random_features(rng, n=50, dim=32):
  return feature_io.LocalFeatures(
    rng.uniform(0, 200, size=[n, 2]).astype(np.float32),
    np.ones(n, np.float32),
    _unit(rng.normal(size=[n, dim])),
    np.ones(n, np.float32),
    np.zeros(n, np.float32),
  )


class RerankTest(tf.test.TestCase):
  def test_ransac_recovers_a_known_affine_transform(self):
    query, index = _pair(np.random.default_rng(0))
    matches = geometric_verification.match_features(query.descriptors, index.descriptors, 0.8)
    self.assertLen(matches, 100)
    self.assertAllEqual(matches[:, 0], matches[:, 1])
    result = geometric_verification.ransac_inliers(
      query.locations, index.locations, matches, "affine", 3.0
    )
    true_inliers = matches[:, 0] < 60
    self.assertGreaterEqual(np.sum(result.mask & true_inliers), 0.95 * 60)
    self.assertLessEqual(np.sum(result.mask & ~true_inliers), 2)
    self.assertAllClose(result.matrix[:, :2], _A[:, :2], atol=1e-2)
    self.assertAllClose(result.matrix[:, 2], _A[:, 2], atol=1.0)
    homography = geometric_verification.ransac_inliers(
      query.locations, index.locations, matches, "homography", 3.0
    )
    self.assertGreaterEqual(np.sum(homography.mask & true_inliers), 0.95 * 60)
    # Too few matches: no model.
    self.assertEqual(
      geometric_verification.ransac_inliers(
        query.locations, index.locations, matches[:2]
      ).num_inliers,
      0,
    )

  def test_implausible_fits_are_rejected_and_plausible_ones_kept(self):
    # Keypoints on a grid matched to a line: the map (x, y) -> (0.4 y + 60, 0.5 y)
    # squeezes the query (singular values 0.64 and 0) and fits every match.
    grid = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0)), -1).reshape(-1, 2) * 16
    degenerate = np.array([[0.0, 0.4, 60.0], [0.0, 0.5, 0.0]])
    dst_xy = grid[:, ::-1] @ degenerate[:, :2].T + degenerate[:, 2]
    matches = np.stack([np.arange(64), np.arange(64)], 1)
    loose = geometric_verification.ransac_inliers(grid, dst_xy[:, ::-1], matches, "affine", 2.0)
    self.assertEqual(loose.num_inliers, 64)
    checked = geometric_verification.ransac_inliers(
      grid, dst_xy[:, ::-1], matches, "affine", 2.0, max_scale_change=3.0, max_anisotropy=2.0
    )
    self.assertEqual(checked.num_inliers, 0)
    self.assertIsNone(checked.matrix)
    # The test's real transform (rotation + mild shear) passes the same checks.
    query, index = _pair(np.random.default_rng(1))
    real = geometric_verification.ransac_inliers(
      query.locations,
      index.locations,
      geometric_verification.match_features(query.descriptors, index.descriptors, 0.8),
      "affine",
      3.0,
      max_scale_change=3.0,
      max_anisotropy=2.0,
    )
    self.assertGreaterEqual(real.num_inliers, 57)
    self.assertTrue(geometric_verification.is_plausible_transform(_A, 3.0, 2.0))
    self.assertTrue(geometric_verification.is_plausible_transform(_A, None, None))
    mirrored = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    self.assertFalse(geometric_verification.is_plausible_transform(mirrored, 3.0, None))
    self.assertFalse(
      geometric_verification.is_plausible_transform(np.diag([4.0, 4.0, 1.0]), 3.0, None)
    )
    self.assertFalse(
      geometric_verification.is_plausible_transform(np.diag([1.0, 2.5, 1.0]), None, 2.0)
    )
    self.assertTrue(
      geometric_verification.is_plausible_transform(2.0 * np.diag([1.5, 1.5, 1.0]), 3.0, 2.0)
    )

  def test_match_features_threshold_and_ratio(self):
    a = np.eye(4, dtype=np.float32)
    b = np.stack([a[0], _unit(np.array([1.0, 1.0, 0, 0]))])  # b[1] is 0.765 from a[0], a[1]
    self.assertAllEqual(geometric_verification.match_features(a, b, 0.8), [[0, 0], [1, 1]])
    self.assertAllEqual(geometric_verification.match_features(a, b, 0.7), [[0, 0]])
    # a[1]: nearest 0.765, second 1.414; the ratio test at 0.5 rejects it.
    self.assertAllEqual(geometric_verification.match_features(a, b, 0.8, ratio=0.5), [[0, 0]])
    self.assertEqual(geometric_verification.match_features(a[:0], b).shape, (0, 2))
    # The dense path and the KD-tree give the same matches.
    rng = np.random.default_rng(3)
    x, y = _unit(rng.normal(size=[200, 16])), _unit(rng.normal(size=[300, 16]))
    for ratio in (None, 0.9):
      dense = geometric_verification.match_features(x, y, 1.1, ratio)
      with mock.patch.object(geometric_verification, "_DENSE_PAIRS", 0):
        self.assertAllEqual(geometric_verification.match_features(x, y, 1.1, ratio), dense)
      self.assertNotEmpty(dense)
    with self.assertRaisesRegex(ValueError, "cannot match"):
      geometric_verification.match_features(a, binarize.binarize(b))

  def test_verified_image_moves_from_rank_5_to_rank_0(self):
    rng = np.random.default_rng(1)
    query, verified = _pair(rng)
    database = [_random_features(rng) for _ in range(10)]
    database[7] = verified
    ranks = np.array([[3, 1, 4, 0, 9, 7, 2, 5, 6, 8]])
    new_ranks, counts = rerank.rerank(ranks, [query], database.__getitem__, top_k=8)
    self.assertAllEqual(new_ranks[0], [7, 3, 1, 4, 0, 9, 2, 5, 6, 8])
    self.assertGreaterEqual(counts[0][7], 55)
    self.assertLen(counts[0], 8)
    # Outside the top-k: not verified, not moved.
    new_ranks, _ = rerank.rerank(ranks, [query], database.__getitem__, top_k=5)
    self.assertAllEqual(new_ranks, ranks)
    # Junk does not use up a slot: with 2 junk images before it, top_k=4 reaches rank 5.
    new_ranks, counts = rerank.rerank(ranks, [query], database.__getitem__, top_k=4, junk=[[1, 4]])
    self.assertEqual(new_ranks[0, 0], 7)
    self.assertNotIn(1, counts[0])
    # Binarised descriptors verify too.
    binary = lambda f: f._replace(descriptors=binarize.binarize(f.descriptors))
    new_ranks, _ = rerank.rerank(
      ranks, [binary(query)], lambda i: binary(database[i]), top_k=8, distance_threshold=6
    )
    self.assertEqual(new_ranks[0, 0], 7)

  def test_feature_files_round_trip_and_evaluation(self):
    rng = np.random.default_rng(2)
    directory = self.create_tempdir().full_path
    query, verified = _pair(rng)
    index = [_random_features(rng) for _ in range(6)]
    index[4] = verified
    # Global descriptors: the positive db_4 is ranked last by the global search.
    query_global = _unit(np.array([1.0, 0, 0, 0]))
    db_globals = _unit(np.array([[1, 0.1 * i, 0, 0] for i in range(6)]) + [[0, 0, 0, 0]] * 6)
    db_globals[4] = _unit(np.array([0.0, 0, 1.0, 1.0]))

    def write(name, features, global_descriptor):
      local_extractor.write_outputs(
        directory,
        name,
        {
          "global": global_descriptor,
          "locations": features.locations,
          "descriptors": features.descriptors,
          "scales": features.scales,
          "scores": features.attention,
        },
      )

    write("q_0", query, query_global)
    for i, features in enumerate(index):
      write(f"db_{i}", features, db_globals[i])
    loaded = local_extractor.read_local_features(os.path.join(directory, "db_4.delg_local"))
    self.assertAllClose(loaded.locations, verified.locations)
    self.assertAllClose(loaded.descriptors, verified.descriptors)
    self.assertAllClose(
      datum_io.read_from_file(os.path.join(directory, "q_0.delg_global")), query_global
    )
    gnd = {
      "imlist": [f"db_{i}" for i in range(6)],
      "qimlist": ["q_0"],
      "gnd": [{"bbx": None, "easy": [4], "hard": [], "junk": [0]}],
    }
    gnd_path = os.path.join(directory, "gnd_test.pkl")
    with open(gnd_path, "wb") as f:
      pickle.dump(gnd, f)
    gv = geometric_verification.GeometricVerificationConfig(top_k=10)
    config = retrieval_config.RetrievalConfig(
      suffix=".delg_global", use_geometric_verification=True, geometric_verification=gv
    )
    evaluation = evaluation_lib.evaluate(gnd_path, directory, directory, config=config)
    before, after = evaluation.global_results, evaluation.results
    self.assertAllClose(before["easy"].mean_ap, 0.1)  # 5th after junk removal: (0 + 1/5) / 2
    self.assertAllClose(after["easy"].mean_ap, 1.0)
    self.assertIn("after geometric verification", evaluation.summary)

    # Distractors (global descriptors only, no local features) are searched too.
    # Both rank above db_4 globally; they count 0 inliers, so db_4 still moves to the
    # top, and they keep their global order below it.
    distractors = os.path.join(directory, "distractors")
    os.makedirs(distractors)
    for i, vector in enumerate([[1.0, 0, 0.1, 0.1], [1.0, 0, 0.2, 0.2]]):
      datum_io.write_to_file(os.path.join(distractors, f"d{i}.delg_global"), _unit(vector))
    loaded = []
    real_loader = rerank.local_features_loader

    def recording_loader(features_dir, names, suffix, cache_size=4096):
      load = real_loader(features_dir, names, suffix, cache_size)
      return lambda i: loaded.append((len(names), i)) or load(i)

    with mock.patch.object(rerank, "local_features_loader", recording_loader):
      with_distractors = evaluation_lib.evaluate(
        gnd_path, directory, directory, distractors, config
      )
    self.assertEqual(with_distractors.num_database, 8)
    # Globally db_4 is last of 8 (7th after junk removal): AP (0 + 1/7) / 2.
    self.assertAllClose(with_distractors.global_results["easy"].mean_ap, 1 / 14)
    self.assertAllClose(with_distractors.results["easy"].mean_ap, 1.0)
    self.assertTrue(all(i < 6 for n, i in loaded if n == 6))  # distractors never loaded
    # num_ranked: the ranking is cut to 3 before verification, db_4 is not in it.
    cut = evaluation_lib.evaluate(
      gnd_path, directory, directory, distractors, dataclasses.replace(config, num_ranked=3)
    )
    self.assertAllClose(cut.results["easy"].mean_ap, 0.0)

  def test_distractors_keep_their_global_order_below_verified_images(self):
    rng = np.random.default_rng(3)
    query, verified = _pair(rng)
    database = {0: _random_features(rng), 2: verified}  # 1 and 3: no local features
    ranks = np.array([[0, 1, 2, 3, 4]])
    new_ranks, counts = rerank.rerank(ranks, [query], database.get, top_k=4)
    self.assertAllEqual(new_ranks[0], [2, 0, 1, 3, 4])
    self.assertEqual((counts[0][1], counts[0][3]), (0, 0))

  def test_geometric_verification_config(self):
    config = geometric_verification.GeometricVerificationConfig()
    self.assertEqual((config.top_k, config.residual_threshold, config.model), (100, 20.0, "affine"))
    self.assertIsNone(config.max_scale_change)
    self.assertNotIn("top_k", config.verify_kwargs())
    self.assertEqual(
      config.verify_kwargs()["max_trials"], geometric_verification.DEFAULT_MAX_TRIALS
    )
    with self.assertRaisesRegex(ValueError, "max_scale_change: must be > 0 or None"):
      geometric_verification.GeometricVerificationConfig(max_scale_change=0)
    with self.assertRaisesRegex(ValueError, "model: must be one of"):
      geometric_verification.GeometricVerificationConfig(model="similarity")

  def test_non_finite_local_features_are_refused_naming_the_file(self):
    folder = self.create_tempdir().full_path
    descriptors = np.ones([2, 4], np.float32)
    descriptors[1, 0] = np.nan
    feature_io.write_to_file(
      os.path.join(folder, "q.delg_local"), np.ones([2, 2]), np.ones(2), descriptors, np.ones(2)
    )
    feature_io.write_to_file(
      os.path.join(folder, "ok.delg_local"),
      np.ones([2, 2]),
      np.ones(2),
      np.ones([2, 4]),
      np.ones(2),
    )
    load = rerank.local_features_loader(folder, ["ok", "q"])
    self.assertLen(load(0).descriptors, 2)
    path = os.path.join(folder, "q.delg_local")
    with self.assertRaisesRegex(ValueError, f"^{path}: non-finite local feature descriptors"):
      load(1)


if __name__ == "__main__":
  tf.test.main()
