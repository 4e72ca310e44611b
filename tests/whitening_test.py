"""Tests of dolg_tf.retrieval.whitening and the dolg-learn-whitening command.

The learned whitening, PCA-whitening and PCA are checked on 2-D cases worked
out by hand (below), on DELF's own pinned values of whiten_test.py (a
rank-deficient 2-D case that DELF regularises with 1e-10), and on the defining
properties in 5-D; the written pca_parameters files go through extraction's
PcaProjection / GlobalPostprocess and must give apply_whitening's descriptors.
"""

import json
import os
import pickle
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from google.protobuf import text_format

from dolg_tf.extraction import postprocess
from dolg_tf.io import config_io, datum_io
from dolg_tf.protos import datum_pb2
from dolg_tf.retrieval import learn_whitening, whitening
from tests import testutil

MODULE = "dolg_tf.retrieval.learn_whitening"
SQRT_HALF = np.sqrt(0.5)


def _random_descriptors(n=40, d=6, seed=0):
  x = np.random.default_rng(seed).normal(size=[n, d]) * np.linspace(2.0, 0.5, d)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


class LearnWhiteningMathTest(tf.test.TestCase):
  def test_learned_whitening_by_hand(self):
    # x0=(1,0) ~ x1=(-1,0), x2=(0,1) ~ x3=(0,-1): differences (2,0), (0,2)
    # -> S_w = diag(2, 2), W = I / sqrt(2); m = mean(x0, x2) = (0.5, 0.5).
    # sum (x-m)(x-m)^T = [[3, 1], [1, 3]], whitened: S_b = [[1.5, .5], [.5, 1.5]],
    # eigenvalues 2 on (1,1)/sqrt2 and 1 on (1,-1)/sqrt2 (first component positive):
    # P = E^T W = [[.5, .5], [.5, -.5]].
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    learned = whitening.learn_whitening(x, [0, 2], [1, 3])
    self.assertAllClose(learned.mean, [0.5, 0.5])
    self.assertAllClose(learned.eigenvalues, [2.0, 1.0])
    self.assertAllClose(learned.projection, [[0.5, 0.5], [0.5, -0.5]])
    self.assertEqual(learned.regularization, 0.0)
    # x0 - m = (.5, -.5) -> P: (0, .5) -> / (.5 + 1e-6).
    out = whitening.apply_whitening(x[:1], learned.mean, learned.projection)
    self.assertAllClose(out, [[0.0, 0.5 / (0.5 + 1e-6)]], atol=1e-12)
    self.assertAllClose(
      whitening.apply_whitening(x[:1], learned.mean, learned.projection, 1), [[0.0]]
    )

  def test_delf_pinned_values(self):
    # DELF's whiten_test.py: descriptors as columns [[.14, .96], [.38, .26]],
    # one pair (0, 1): S_w has rank 1, cholesky adds 1e-10 on the diagonal.
    columns = np.array([[0.14022471, 0.96360618], [0.37601032, 0.25528411]])
    learned = whitening.learn_whitening(columns.T, [0], [1])
    self.assertAllClose(learned.mean, [0.14022471, 0.37601032])
    self.assertEqual(learned.regularization, 1e-10)
    expected = np.array([[1.18894378e00, -1.74326044e-01], [1.45071361e04, 9.89421193e04]])
    # Rows may differ from DELF's np.linalg.eig in sign only (module doc).
    signs = np.sign(np.sum(learned.projection * expected, axis=1, keepdims=True))
    self.assertAllClose(learned.projection * signs, expected, rtol=1e-6)
    whitened = whitening.apply_whitening(columns.T, learned.mean, learned.projection)
    self.assertAllClose(
      np.abs(whitened.T), np.abs([[0.0, 9.99999e-01], [0.0, -2.81240452e-13]]), atol=1e-6
    )

  def test_learned_whitening_properties(self):
    x = _random_descriptors(n=30, d=5, seed=1)
    q, p = np.arange(0, 30, 2), np.arange(1, 30, 2)
    learned = whitening.learn_whitening(x, q, p)
    s_w = whitening.pair_covariance(x, q, p)
    # Whitens the matching-pair differences ...
    self.assertAllClose(learned.projection @ s_w @ learned.projection.T, np.eye(5), atol=1e-9)
    # ... and diagonalises the scatter of all descriptors around the query mean.
    centred = x - x[q].mean(axis=0)
    scatter = learned.projection @ centred.T @ centred @ learned.projection.T
    self.assertAllClose(scatter, np.diag(learned.eigenvalues), atol=1e-8)
    self.assertTrue(np.all(np.diff(learned.eigenvalues) <= 0))

  def test_blocks_give_the_same_result(self):
    x = _random_descriptors(n=30, d=5, seed=4).astype(np.float32)
    q, p = np.arange(0, 30, 2), np.arange(1, 30, 2)
    whole = whitening.learn_whitening(x, q, p)
    with mock.patch.object(whitening, "BLOCK", 4):
      blocked = whitening.learn_whitening(x, q, p)
      blocked_pca = whitening.learn_pca(x)
    self.assertAllClose(blocked.mean, whole.mean)
    self.assertAllClose(blocked.projection, whole.projection)
    self.assertAllClose(blocked_pca.projection, whitening.learn_pca(x).projection)

  def test_degenerate_cut(self):
    values = [5.0, 3.0, 1.0, 1.0, 1.0, 0.5]
    self.assertIsNone(whitening.degenerate_cut(values, 2))
    self.assertEqual(whitening.degenerate_cut(values, 3), (2, 4))
    self.assertEqual(whitening.degenerate_cut(values, 4), (2, 4))
    self.assertIsNone(whitening.degenerate_cut(values, 5))
    self.assertIsNone(whitening.degenerate_cut(values, 6))

  def test_all_pairs_of_equal_landmarks_leave_equal_eigenvalues(self):
    # All pairs (i < j) of C landmarks of n images each: S_w is proportional to
    # the within-landmark scatter, so after whitening only the C - 1
    # between-landmark directions and the offset of m (the mean of the pairs'
    # first images, which over-weights early images) from the landmark means
    # differ; the other D - C eigenvalues are equal.
    rng = np.random.default_rng(5)
    x = np.repeat(rng.normal(size=[3, 6]), 5, axis=0) + 0.3 * rng.normal(size=[15, 6])
    pairs, _ = learn_whitening.label_pairs(np.repeat(np.arange(3), 5), max_pairs=100)
    values = whitening.learn_whitening(x, pairs[:, 0], pairs[:, 1]).eigenvalues
    self.assertAllClose(values[3:], np.full(3, values[-1]))
    self.assertGreater(values[2], values[3] * (1 + 1e-3))
    self.assertEqual(whitening.degenerate_cut(values, 4), (3, 5))
    self.assertIsNone(whitening.degenerate_cut(values, 3))

  def test_pca_whitening_by_hand(self):
    # (2,0), (-2,0), (0,1), (0,-1) rotated by 45 degrees: mean 0, C = R diag(2, .5) R^T,
    # eigenvectors (1,1)/sqrt2 (2) and (1,-1)/sqrt2 (.5): P = [[1,1]/2, [1,-1]].
    r = SQRT_HALF
    x = np.array([[np.sqrt(2), np.sqrt(2)], [-np.sqrt(2), -np.sqrt(2)], [-r, r], [r, -r]])
    learned = whitening.learn_pca_whitening(x)
    self.assertAllClose(learned.mean, [0.0, 0.0])
    self.assertAllClose(learned.eigenvalues, [2.0, 0.5])
    self.assertAllClose(learned.projection, [[0.5, 0.5], [1.0, -1.0]])
    pca = whitening.learn_pca(x)
    self.assertAllClose(pca.projection, [[r, r], [r, -r]])
    self.assertAllClose(whitening.learn("pca", x).projection, pca.projection)

  def test_rank_deficient_pca_whitening_refused(self):
    with self.assertRaisesRegex(ValueError, r"rank-deficient \(rank 1 of 3\)"):
      whitening.learn_pca_whitening([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, "row 1 holds NaN"):
      whitening.learn_pca([[1.0, 0.0], [np.nan, 1.0], [0.0, 1.0]])
    with self.assertRaisesRegex(ValueError, "index out of range"):
      whitening.learn_whitening(np.eye(3), [0], [3])
    with self.assertRaisesRegex(ValueError, "output_dim must be in"):
      whitening.apply_whitening(np.eye(2), np.zeros(2), np.eye(2), 3)
    with self.assertRaisesRegex(ValueError, "unknown method"):
      whitening.learn("lw", np.eye(2))

  def test_cholesky_regularises_like_delf(self):
    # Not positive definite: alpha 1e-10, 1e-9, ... until 1 works (DELF's test case).
    lower, alpha = whitening.cholesky(np.array([[1.0, 2.0], [-2.0, 1.0]]))
    self.assertEqual(alpha, 1.0)
    self.assertAllClose(lower @ lower.T, [[2.0, -2.0], [-2.0, 2.0]])

  def test_label_pairs_all_and_sampled(self):
    labels = np.array(["a", "b", "a", "c", "a", "b"])
    pairs, total = learn_whitening.label_pairs(labels, max_pairs=10)
    self.assertEqual(total, 4)  # a: 3 pairs, b: 1
    self.assertCountEqual(map(tuple, pairs), [(0, 2), (0, 4), (2, 4), (1, 5)])
    labels = np.repeat(np.arange(5), 30)  # 5 * 435 pairs
    pairs, total = learn_whitening.label_pairs(labels, max_pairs=1000, seed=3)
    self.assertEqual((len(pairs), total), (1000, 2175))
    self.assertTrue(np.all(labels[pairs[:, 0]] == labels[pairs[:, 1]]))
    self.assertTrue(np.all(pairs[:, 0] < pairs[:, 1]))
    self.assertLen({tuple(p) for p in pairs}, 1000)

  def test_count_groups(self):
    pairs = np.array([[0, 1], [2, 3], [1, 2], [5, 6], [7, 7]])
    self.assertEqual(learn_whitening.count_groups(pairs), 3)  # {0,1,2,3}, {5,6}, {7}


class ParameterFilesTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.product(method=whitening.METHODS, file_format=whitening.FORMATS, dim=[6, 3])
  def test_extraction_gives_apply_whitening(self, method, file_format, dim):
    x = _random_descriptors()
    learned = whitening.learn(method, x, np.arange(0, 40, 2), np.arange(1, 40, 2))
    out = self.create_tempdir().full_path
    files = whitening.write_parameter_files(learned, out, file_format)
    # The printed DolgConfig section, parsed back as a DolgConfig.
    config = text_format.Parse(whitening.config_snippet(files, dim), config_io.DolgConfig())
    self.assertEqual(config.global_config.pca_parameters.use_whitening, method == "pca_whitening")
    pca = postprocess.PcaProjection(config.global_config.pca_parameters)
    expected = whitening.apply_whitening(x, learned.mean, learned.projection, dim)
    self.assertAllClose(pca(x), expected, atol=2e-5)
    # The whole global post-processing of extraction (AVERAGE pooling over scales, then PCA).
    per_scale = np.stack([x[0], x[1] + 0.1 * x[2]])
    post = postprocess.GlobalPostprocess(config.global_config, pca)
    pooled = postprocess.pool_scales(per_scale)
    self.assertAllClose(
      post(per_scale),
      whitening.apply_whitening(pooled, learned.mean, learned.projection, dim),
      atol=2e-5,
    )

  def test_datum_files_are_delf_datum_protos(self):
    learned = whitening.learn_pca_whitening(_random_descriptors())
    files = whitening.write_parameter_files(learned, self.create_tempdir().full_path, "datum")
    datum = datum_pb2.DatumProto.FromString(open(files.projection_path, "rb").read())
    self.assertEqual(list(datum.shape.dim), [6, 6])
    self.assertAllClose(np.reshape(datum.float_list.value, [6, 6]), learned.eigenvectors)
    self.assertAllClose(datum_io.read_from_file(files.variances_path), learned.eigenvalues)
    delf = whitening.config_snippet(files, 4, delf=True)
    self.assertStartsWith(delf, "delf_global_config {")
    self.assertIn(f'pca_variances_path: "{files.variances_path}"', delf)


def _write_descriptors(folder, ids, matrix):
  os.makedirs(folder, exist_ok=True)
  for image_id, row in zip(ids, matrix):
    datum_io.write_to_file(os.path.join(folder, image_id + ".dolg_global"), row.astype(np.float32))


class CommandTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.ids = [f"img{i:02d}" for i in range(20)]
    self.labels = [i // 4 for i in range(20)]  # 5 landmarks x 4 images
    self.features = os.path.join(self.dir, "features")
    _write_descriptors(self.features, self.ids, _random_descriptors(n=20, d=4, seed=2))
    self.labels_csv = self._write(
      "labels.csv",
      "id,landmark_id\n" + "".join(f"{i},{c}\n" for i, c in zip(self.ids, self.labels)),
    )

  def _write(self, name, text):
    path = os.path.join(self.dir, name)
    with open(path, "w") as f:
      f.write(text)
    return path

  def _run(self, *args):
    out = os.path.join(self.dir, "out")
    return testutil.run_module(
      MODULE, f"--descriptors={self.features}", f"--output_dir={out}", *args
    ), out

  def _assert_written(self, out, dim, use_whitening=False):
    with open(os.path.join(out, "global_config.pbtxt")) as f:
      config = text_format.Parse(f.read(), config_io.DolgConfig())
    self.assertEqual(config.global_config.pca_parameters.pca_dim, dim)
    self.assertEqual(config.global_config.pca_parameters.use_whitening, use_whitening)
    pca = postprocess.PcaProjection(config.global_config.pca_parameters)
    self.assertEqual(pca(np.ones(4, np.float32)).shape, (dim,))

  def test_labels_csv(self):
    result, out = self._run(f"--labels_csv={self.labels_csv}", "--dim=2")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("20 labelled images with descriptors", result.stdout)
    self.assertIn("30 same-label pairs, all used", result.stdout)
    self.assertIn("global_config {", result.stdout)
    self._assert_written(out, 2)

  def test_gnd_and_pairs_csv(self):
    gnd = {
      "imlist": self.ids[4:],
      "qimlist": self.ids[:4],
      "gnd": [
        {"easy": [4 * q, 4 * q + 1, 4 * q + 2], "hard": [4 * q + 3], "junk": [], "bbx": None}
        for q in range(4)
      ],
    }
    gnd_path = os.path.join(self.dir, "gnd_x.pkl")
    with open(gnd_path, "wb") as f:
      pickle.dump(gnd, f)
    result, out = self._run(f"--gnd={gnd_path}")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("16 pairs, 0 skipped", result.stdout)
    self.assertIn("note: the pairs link 4 groups of images", result.stdout)
    self._assert_written(out, 4)
    pairs = self._write(
      "pairs.csv",
      "query_id,positive_id\n"
      + "".join(f"{self.ids[i]},{self.ids[i + 1]}\n" for i in range(0, 19))
      + "unknown,img00\n",
    )
    result, out = self._run(f"--pairs_csv={pairs}", "--file_format=datum")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("20 pairs, 1 skipped", result.stdout)
    self.assertTrue(os.path.exists(os.path.join(out, "projection.datum")))

  def test_train_clean_layout(self):
    rows = "".join(f"{c},{' '.join(self.ids[4 * c : 4 * c + 4])}\n" for c in range(5))
    clean = self._write("train_clean.csv", "landmark_id,images\n" + rows)
    result, out = self._run(f"--labels_csv={clean}", "--dim=2")
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("30 same-label pairs, all used", result.stdout)
    self._assert_written(out, 2)

  def test_pca_whitening_needs_no_pairs(self):
    result, out = self._run("--method=pca_whitening", "--dim=3")
    self.assertEqual(result.returncode, 0, result.stderr)
    self._assert_written(out, 3, use_whitening=True)

  def test_errors(self):
    bad_csv = self._write("bad.csv", "image,label\na,1\n")
    for args, pattern in (
      ([f"--labels_csv={bad_csv}"], f"{bad_csv}: missing column\\(s\\) id, landmark_id"),
      (["--method=lw"], "--method: must be one of learned, pca_whitening, pca"),
      ([], "--method=learned needs matching pairs"),
      ([f"--labels_csv={self.labels_csv}", "--dim=5"], "--dim=5 exceeds"),
    ):
      with self.subTest(args=args):
        testutil.assert_one_line_error(self, "learn_whitening", self._run(*args)[0], pattern)
    few = self._write("few.csv", "query_id,positive_id\nimg00,img01\nimg02,img03\n")
    testutil.assert_one_line_error(
      self,
      "learn_whitening",
      self._run(f"--pairs_csv={few}")[0],
      "too few matching pairs: .* rank 2 < D = 4",
    )

  def test_regularize_accepts_few_pairs(self):
    few = self._write("few.csv", "query_id,positive_id\nimg00,img01\nimg02,img03\n")
    result, out = self._run(f"--pairs_csv={few}", "--regularize")
    self.assertEqual(result.returncode, 0, result.stderr)
    with open(os.path.join(out, "whitening_info.json")) as f:
      info = json.load(f)
    self.assertGreater(info["regularization"], 0)  # DELF's alpha on S_w's diagonal
    self.assertEqual((info["pairs"], info["landmarks"]), (2, 2))

  def test_nan_descriptor(self):
    datum_io.write_to_file(
      os.path.join(self.features, "img03.dolg_global"), np.array([1, np.nan, 0, 0], np.float32)
    )
    result, _ = self._run("--method=pca")
    testutil.assert_one_line_error(
      self, "learn_whitening", result, ".*img03.dolg_global: .*(NaN|non-finite)"
    )


if __name__ == "__main__":
  tf.test.main()
