"""VLAD / ASMK / ASMK* / R-* aggregation (retrieval/aggregation.py), its files, config and command.

Expected values are derived by hand (comments), restated from DELF's
feature_aggregation_extractor_test (same codebook and features, values
re-derived below), and compared with an independent slow restatement of
DELF's computation (`_delf_reference`: per feature, dense K*D, float64).
"""

import math
import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.io import aggregation_config_io, datum_io, feature_io
from dolg_tf.protos import aggregation_config_pb2, datum_pb2
from dolg_tf.retrieval import aggregation
from dolg_tf.utils import dir_lock
from tests import testutil

VLAD, ASMK, ASMK_STAR = aggregation.VLAD, aggregation.ASMK, aggregation.ASMK_STAR
MODULE = "dolg_tf.retrieval.aggregate"

# 3 visual words in 2-D.
CODEBOOK = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], np.float32)
# Squared distances to the 3 words, nearest word, residual:
#   f0 [0.5, 0]: 0.25, 2.25, 4.25 -> w0, [0.5, 0]
#   f1 [2, 1]:   5,    1,    5    -> w1, [0, 1]
#   f2 [0, 3]:   9,    13,   1    -> w2, [0, 1]
#   f3 [-1, 0]:  1,    9,    5    -> w0, [-1, 0]
FEATURES = np.array([[0.5, 0.0], [2.0, 1.0], [0.0, 3.0], [-1.0, 0.0]], np.float32)
# DELF's test case: 5 words, 3 (or 4) features.
DELF_CODEBOOK = np.array([[0.5, 0.5], [0.0, 0.0], [1.0, 0.0], [-0.5, -0.5], [0.0, 1.0]], np.float32)
DELF_FEATURES = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 2.0]])
DELF_FEATURES_4 = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 2.0], [0.0, 2.0]])


def _config(kind, codebook=CODEBOOK, l2=True, assignments=1, regional=False, batch=100):
  return aggregation_config_pb2.AggregationConfig(
    codebook_size=codebook.shape[0],
    feature_dimensionality=codebook.shape[1],
    aggregation_type=kind,
    use_l2_normalization=l2,
    num_assignments=assignments,
    use_regional_aggregation=regional,
    feature_batch_size=batch,
  )


def _aggregate(kind, features=FEATURES, regions=None, codebook=CODEBOOK, **kwargs):
  return aggregation.Aggregator(_config(kind, codebook, **kwargs), codebook).aggregate(
    features, regions
  )


def _delf_reference(config, codebook, features, regions=None):
  """DELF's Extract restated independently: loops, Python sorting, float64, dense K*D."""
  k, d = codebook.shape
  codebook = codebook.astype(np.float64)

  def vlad(rows, normalize):
    out = np.zeros([k, d])
    for row in rows:
      dist = [(float(np.sum((row - c) ** 2)), j) for j, c in enumerate(codebook)]
      for _, j in sorted(dist)[: config.num_assignments]:  # ties: lower id first
        out[j] += row - codebook[j]
    out = out.reshape(-1)
    return out / math.sqrt(max(float(out @ out), 1e-12)) if normalize else out

  features = np.asarray(features, np.float64).reshape(-1, d)
  if config.use_regional_aggregation:
    total, start = np.zeros([k * d]), 0
    for count in regions:
      total += vlad(features[start : start + count], True)
      start += count
    if config.aggregation_type == VLAD and config.use_l2_normalization:
      total = total / math.sqrt(max(float(total @ total), 1e-12))
    elif len(regions):
      total = total / len(regions)
  else:
    normalize = config.aggregation_type == VLAD and config.use_l2_normalization
    total = vlad(features, normalize)
  if config.aggregation_type == VLAD:
    return total, -1
  rows = total.reshape(k, d)
  norms = np.sqrt(np.sum(rows**2, axis=1))
  words = [j for j in range(k) if norms[j] > 1e-6]
  vectors = [rows[j] / norms[j] for j in words]
  if config.aggregation_type == ASMK_STAR:
    packed = [np.packbits(v > 0) for v in vectors]
    return np.concatenate(packed) if packed else np.zeros([0], np.uint8), words
  return np.concatenate(vectors) if vectors else np.zeros([0]), words


class HandComputedTest(tf.test.TestCase, parameterized.TestCase):
  def test_vlad_unnormalized_sums_residuals_per_word(self):
    # w0: [0.5, 0] + [-1, 0]; w1: [0, 1]; w2: [0, 1].
    vlad, words = _aggregate(VLAD, l2=False)
    self.assertAllEqual(vlad, [-0.5, 0, 0, 1, 0, 1])
    self.assertEqual(vlad.dtype, np.float32)
    self.assertEqual(words.shape, ())
    self.assertEqual(int(words), -1)

  def test_vlad_l2_normalized(self):
    vlad, _ = _aggregate(VLAD)  # norm sqrt(0.25 + 1 + 1) = 1.5
    self.assertAllClose(vlad, [-1 / 3, 0, 0, 2 / 3, 0, 2 / 3])

  def test_vlad_two_assignments(self):
    # f0 -> w0 [0.5, 0], w1 [-1.5, 0]; f1 -> w1 [0, 1], w0 (tie 5 = 5: lower id) [2, 1];
    # f2 -> w2 [0, 1], w0 [0, 3]; f3 -> w0 [-1, 0], w2 [-1, -2].
    vlad, _ = _aggregate(VLAD, l2=False, assignments=2)
    self.assertAllClose(vlad, [1.5, 4, -1.5, 1, -1, -1])

  def test_tie_goes_to_the_lower_word(self):
    vlad, _ = _aggregate(VLAD, features=[[1.0, 0.0]], l2=False)  # distance 1 to w0 and w1
    self.assertAllEqual(vlad, [1, 0, 0, 0, 0, 0])

  def test_asmk_normalizes_each_word(self):
    asmk, words = _aggregate(ASMK)
    self.assertAllClose(asmk, [-1, 0, 0, 1, 0, 1])
    self.assertAllEqual(words, [0, 1, 2])
    self.assertEqual(words.dtype, np.int64)

  def test_asmk_drops_words_whose_residuals_cancel(self):
    asmk, words = _aggregate(ASMK, features=[[0.5, 0.0], [-0.5, 0.0], [2.0, 1.0]])
    self.assertAllClose(asmk, [0, 1])
    self.assertAllEqual(words, [1])

  def test_asmk_star_bits(self):
    # w0 [-1, 0] -> bits 00 -> 0; w1, w2 [0, 1] -> bits 01 -> 0b01000000 = 64.
    packed, words = _aggregate(ASMK_STAR)
    self.assertAllEqual(packed, [0, 64, 64])
    self.assertEqual(packed.dtype, np.uint8)
    self.assertAllEqual(words, [0, 1, 2])

  def test_asmk_star_pads_to_whole_bytes(self):
    codebook = np.eye(2, 10, dtype=np.float32)
    packed, words = _aggregate(ASMK_STAR, features=[[2.0] + [0.0] * 8 + [1.0]], codebook=codebook)
    # residual to w0: [1, 0, ..., 0, 1] -> bits 10000000 01(000000)
    self.assertAllEqual(packed, [128, 64])
    self.assertAllEqual(words, [0])

  def _regional_sum(self):
    # Regions [f0, f1], [], [f2, f3]; each region's VLAD L2-normalised:
    # r1: w0 [0.5, 0], w1 [0, 1] / sqrt(1.25); r3: w0 [-1, 0], w2 [0, 1] / sqrt(2).
    a, b = 1 / math.sqrt(1.25), 1 / math.sqrt(2)
    return np.array([0.5 * a - b, 0, 0, a, 0, b])

  def test_rvlad_divides_by_the_number_of_regions(self):
    rvlad, _ = _aggregate(VLAD, regions=[2, 0, 2], regional=True, l2=False)
    self.assertAllClose(rvlad, self._regional_sum() / 3)

  def test_rvlad_l2_normalized(self):
    total = self._regional_sum()
    rvlad, _ = _aggregate(VLAD, regions=[2, 0, 2], regional=True, l2=True)
    self.assertAllClose(rvlad, total / np.linalg.norm(total))

  def test_rasmk_and_rasmk_star(self):
    rasmk, words = _aggregate(ASMK, regions=[2, 0, 2], regional=True)
    self.assertAllClose(rasmk, [-1, 0, 0, 1, 0, 1])
    self.assertAllEqual(words, [0, 1, 2])
    packed, words = _aggregate(ASMK_STAR, regions=[2, 0, 2], regional=True)
    self.assertAllEqual(packed, [0, 64, 64])

  @parameterized.parameters(1, 2, 3, 0, -1)
  def test_batch_size_does_not_change_the_result(self, batch):
    vlad, _ = _aggregate(VLAD, l2=False, assignments=2, batch=batch)
    self.assertAllClose(vlad, [1.5, 4, -1.5, 1, -1, -1])

  def test_empty_inputs(self):
    vlad, _ = _aggregate(VLAD, features=np.array([[]]))
    self.assertAllEqual(vlad, np.zeros(6))
    asmk, words = _aggregate(ASMK, features=np.zeros([0, 2]))
    self.assertEqual(asmk.shape, (0,))
    self.assertEqual(words.shape, (0,))
    packed, _ = _aggregate(ASMK_STAR, features=np.zeros([0, 2]))
    self.assertEqual((packed.shape, packed.dtype), ((0,), np.uint8))
    rvlad, _ = _aggregate(VLAD, features=np.array([[]]), regions=[], regional=True)
    self.assertAllEqual(rvlad, np.zeros(6))

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, r"sum\(num_features_per_region\).*5 vs 4"):
      _aggregate(VLAD, regions=[3, 2], regional=True)
    with self.assertRaisesRegex(ValueError, r"must be \[N, 2\]"):
      _aggregate(VLAD, features=np.ones([3, 4]))
    with self.assertRaisesRegex(ValueError, "needs num_features_per_region"):
      _aggregate(ASMK, regional=True)
    with self.assertRaisesRegex(ValueError, "codebook is"):
      aggregation.Aggregator(_config(VLAD), np.zeros([4, 2]))
    with self.assertRaisesRegex(ValueError, "aggregation_type"):
      aggregation.Aggregator(_config(0), CODEBOOK)


class DelfBehaviourTest(tf.test.TestCase, parameterized.TestCase):
  """DELF's feature_aggregation_extractor_test cases (values re-derived in comments)."""

  def _run(self, kind, features=DELF_FEATURES, regions=None, **kwargs):
    return _aggregate(kind, features, regions, codebook=DELF_CODEBOOK, **kwargs)

  def test_vlad(self):
    # [1,0] -> w2 (0); [-1,0] -> w3 [-0.5, 0.5]; [1,2] -> w4 [1, 1]; norm sqrt(2.5).
    self.assertAllEqual(self._run(VLAD, l2=False)[0], [0, 0, 0, 0, 0, 0, -0.5, 0.5, 1, 1])
    expected = np.array([0, 0, 0, 0, 0, 0, -0.5, 0.5, 1, 1]) / math.sqrt(2.5)
    self.assertAllClose(self._run(VLAD)[0], expected)
    self.assertAllClose(self._run(VLAD, batch=2)[0], expected)

  def test_vlad_three_assignments(self):
    # [1,0] -> w2, w0, w1; [-1,0] -> w3, w1, w4; [1,2] -> w4, w0, w2.
    vlad, _ = self._run(VLAD, l2=False, assignments=3)
    self.assertAllEqual(vlad, [1, 1, 0, 0, 0, 2, -0.5, 0.5, 0, 0])

  def test_rvlad(self):
    # Region 1 = the VLAD above / sqrt(2.5); region 2 [0,2] -> w4 [0, 1].
    vlad, _ = self._run(VLAD, DELF_FEATURES_4, [3, 1], l2=False, regional=True)
    self.assertAllClose(vlad, [0, 0, 0, 0, 0, 0, -0.158114, 0.158114, 0.316228, 0.816228])
    vlad, _ = self._run(VLAD, DELF_FEATURES_4, [3, 1], l2=True, regional=True)
    self.assertAllClose(vlad, [0, 0, 0, 0, 0, 0, -0.175011, 0.175011, 0.350021, 0.903453])
    vlad, _ = self._run(VLAD, DELF_FEATURES_4, [0, 3, 0, 1], l2=False, regional=True)
    self.assertAllClose(vlad, [0, 0, 0, 0, 0, 0, -0.079057, 0.079057, 0.158114, 0.408114])

  def test_asmk_family(self):
    asmk, words = self._run(ASMK)
    self.assertAllClose(asmk, [-0.707107, 0.707107, 0.707107, 0.707107])
    self.assertAllEqual(words, [3, 4])
    self.assertAllEqual(self._run(ASMK_STAR)[0], [64, 192])
    asmk, words = self._run(ASMK, assignments=3)  # w1 and w4 cancel out
    self.assertAllClose(asmk, [0.707107, 0.707107, 0, 1, -0.707107, 0.707107])
    self.assertAllEqual(words, [0, 2, 3])
    asmk, words = self._run(ASMK, DELF_FEATURES_4, [3, 1], regional=True)
    self.assertAllClose(asmk, [-0.707107, 0.707107, 0.361261, 0.932465])
    packed, _ = self._run(ASMK_STAR, DELF_FEATURES_4, [3, 1], regional=True)
    self.assertAllEqual(packed, [64, 192])

  @parameterized.product(
    kind=[VLAD, ASMK, ASMK_STAR], assignments=[1, 3], regional=[False, True], l2=[False, True]
  )
  def test_matches_independent_restatement(self, kind, assignments, regional, l2):
    rng = np.random.default_rng(7)
    codebook = rng.normal(size=[16, 8]).astype(np.float32)
    features = rng.normal(size=[60, 8]).astype(np.float32)
    regions = [20, 0, 25, 15] if regional else None
    config = _config(kind, codebook, l2=l2, assignments=assignments, regional=regional, batch=7)
    got, words = aggregation.Aggregator(config, codebook).aggregate(features, regions)
    want, want_words = _delf_reference(config, codebook, features, regions)
    if kind == ASMK_STAR:
      self.assertAllEqual(got, want)
    else:
      self.assertAllClose(got, want, atol=1e-6)
    self.assertAllEqual(words, want_words)


class FilesTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    (VLAD, False, ".vlad"),
    (ASMK, False, ".asmk"),
    (ASMK_STAR, False, ".asmk_star"),
    (VLAD, True, ".rvlad"),
    (ASMK, True, ".rasmk"),
    (ASMK_STAR, True, ".rasmk_star"),
  )
  def test_round_trip_in_delf_format(self, kind, regional, extension):
    config = _config(kind, regional=regional)
    self.assertEqual(aggregation.output_extension(config), extension)
    aggregated, words = aggregation.Aggregator(config, CODEBOOK).aggregate(
      FEATURES, [2, 2] if regional else None
    )
    path = os.path.join(self.get_temp_dir(), "img" + extension)
    aggregation.write_aggregated(path, aggregated, words)
    got, got_words = aggregation.read_aggregated(path, config=config)
    self.assertAllEqual(got, aggregated)
    self.assertEqual(got.dtype, aggregated.dtype)
    self.assertAllEqual(got_words, words)
    with open(path, "rb") as f:
      data = f.read()
    if kind == VLAD:  # DELF's DatumProto of the float32 vector
      datum = datum_pb2.DatumProto.FromString(data)
      self.assertEqual(list(datum.shape.dim), [6])
      self.assertAllClose(datum.float_list.value, aggregated)
      return
    pair = datum_pb2.DatumPairProto.FromString(data)  # DELF's (aggregated, uint32 words)
    self.assertEqual(list(pair.second.shape.dim), [len(words)])
    self.assertEqual(list(pair.second.uint32_list.value), list(words))
    if kind == ASMK_STAR:
      self.assertEqual(list(pair.first.uint32_list.value), list(aggregated))
    else:
      self.assertAllClose(pair.first.float_list.value, aggregated)
    first, second = datum_io.ReadPairFromFile(path)  # DELF's reader API
    self.assertAllEqual(second, words)

  def test_inconsistent_and_corrupt_files(self):
    path = os.path.join(self.get_temp_dir(), "x.asmk")
    aggregation.write_aggregated(path, np.ones(3, np.float32), np.array([1, 2]))
    with self.assertRaisesRegex(OSError, r"x\.asmk: invalid ASMK file: 3 values"):
      aggregation.read_aggregated(path)
    with open(path, "wb") as f:
      f.write(b"\xff\xff\xff")
    self.assertIn("corrupt", aggregation.aggregated_file_problem(path, _config(ASMK)))
    with self.assertRaisesRegex(ValueError, "not an aggregation file"):
      aggregation.read_aggregated(os.path.join(self.get_temp_dir(), "x.bin"))
    path = os.path.join(self.get_temp_dir(), "y.vlad")
    aggregation.write_aggregated(path, np.ones(4, np.float32))
    self.assertIn("wants 6", aggregation.aggregated_file_problem(path, _config(VLAD)))


class ConfigTest(tf.test.TestCase):
  def test_delf_query_config_parses(self):
    text = (
      "codebook_size: 65536\nfeature_dimensionality: 128\naggregation_type: ASMK_STAR\n"
      'codebook_path: "parameters/k65536_codebook_tfckpt/codebook"\nnum_assignments: 1\n'
      "use_regional_aggregation: false\nfeature_batch_size: 100\n"
    )
    config = aggregation_config_io.parse_config(text, "q.pbtxt")
    self.assertEqual(config.aggregation_type, ASMK_STAR)
    self.assertTrue(config.use_l2_normalization)  # DELF's default
    self.assertEqual((config.alpha, config.tau), (3.0, 0.0))

  def test_one_line_errors_name_file_and_field(self):
    cases = {
      "codebook_size: 0": "x.pbtxt: codebook_size: must be > 0",
      "feature_dimensionality: -1": "x.pbtxt: feature_dimensionality: must be > 0",
      "aggregation_type: INVALID": "x.pbtxt: aggregation_type: must be VLAD",
      "num_assignments: 0": "x.pbtxt: num_assignments: must be between 1",
      "codebook_size: 4 num_assignments: 5": "x.pbtxt: num_assignments",
      "tau: 2": r"x.pbtxt: tau: must be a finite number in \[-1, 1\]",
      "alfa: 2": 'x.pbtxt:1:1: .*no field named "alfa"',
      'codebook_path: ""': "x.pbtxt: codebook_path: not set",
    }
    for text, pattern in cases.items():
      if "codebook_path" not in text:
        text += ' codebook_path: "c"'
      with self.assertRaisesRegex(ValueError, "^" + pattern) as error:
        aggregation_config_io.parse_config(text, "x.pbtxt")
      self.assertNotIn("\n", str(error.exception))

  def test_codebook_path_resolves_next_to_the_config(self):
    folder = self.get_temp_dir()
    os.makedirs(os.path.join(folder, "cb"), exist_ok=True)
    np.save(os.path.join(folder, "cb", "codebook.npy"), CODEBOOK)
    config_path = os.path.join(folder, "agg.pbtxt")
    config = _config(ASMK)
    config.codebook_path = "cb/codebook.npy"
    path = aggregation_config_io.resolve_codebook_path(config, config_path)
    self.assertEqual(path, os.path.join(folder, "cb", "codebook.npy"))
    aggregator = aggregation.from_config(config, config_path)
    self.assertAllEqual(aggregator.codebook, CODEBOOK)
    config.codebook_path = "nowhere/codebook"
    with self.assertRaisesRegex(FileNotFoundError, "agg.pbtxt: codebook_path: 'nowhere"):
      aggregation_config_io.resolve_codebook_path(config, config_path)


class AggregateCommandTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.get_temp_dir()
    self.features = os.path.join(self.dir, "features")
    os.makedirs(self.features, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
      rows = rng.normal(size=[5, 2]).astype(np.float32)
      feature_io.write_to_file(
        os.path.join(self.features, f"img{i}.delf"), np.zeros([5, 2]), np.ones(5), rows, np.ones(5)
      )
    np.save(os.path.join(self.dir, "codebook.npy"), CODEBOOK)
    self.config = self._write_config('codebook_path: "codebook.npy"')

  def _write_config(self, extra, name="agg.pbtxt"):
    path = os.path.join(self.dir, name)
    with open(path, "w") as f:
      f.write(f"codebook_size: 3 feature_dimensionality: 2 aggregation_type: ASMK_STAR {extra}\n")
    return path

  def _run(self, *args, config=None):
    out = os.path.join(self.dir, "out")
    result = testutil.run_module(
      MODULE,
      f"--aggregation_config={config or self.config}",
      f"--features_dir={self.features}",
      "--local_suffix=.delf",
      f"--output_dir={out}",
      *args,
    )
    return result, out

  def test_happy_path_resume_and_failure(self):
    result, out = self._run()
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("done 4, skipped 0, failed 0", result.stdout)
    aggregator = aggregation.Aggregator(_config(ASMK_STAR), CODEBOOK)
    descriptors = feature_io.read_from_file(os.path.join(self.features, "img2.delf")).descriptors
    got = aggregation.read_aggregated(os.path.join(out, "img2.asmk_star"))
    want = aggregator.aggregate(descriptors)
    self.assertAllEqual(got[0], want[0])
    self.assertAllEqual(got[1], want[1])
    # Resume: valid outputs skipped, an invalid one done again; a corrupt input recorded.
    with open(os.path.join(out, "img1.asmk_star"), "wb") as f:
      f.write(b"garbage")
    with open(os.path.join(self.features, "img3.delf"), "wb") as f:
      f.write(b"\x0a\xff\xff")
    os.unlink(os.path.join(out, "img3.asmk_star"))
    result, out = self._run()
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("done 1, skipped 2, failed 1", result.stdout)
    with open(os.path.join(out, "failures.tsv")) as f:
      rows = f.read().splitlines()
    self.assertLen(rows, 2)
    self.assertTrue(rows[1].split("\t")[1] == "img3", rows)
    self.assertIn("img3.delf", rows[1])

  def test_regional_with_delf_box_mapping(self):
    # Image "a" = boxes img0, img1; image "b" = box img2 (DELF's mapping CSV rows).
    names = os.path.join(self.dir, "names.txt")
    with open(names, "w") as f:
      f.write("a\nb\n")
    mapping = os.path.join(self.dir, "mapping.csv")
    with open(mapping, "w") as f:
      f.write("name,index_image_id,box_id\nimg0,0,0\nimg2,1,0\nimg1,0,1\n")
    config = self._write_config(
      'codebook_path: "codebook.npy" use_regional_aggregation: true', "r.pbtxt"
    )
    result, out = self._run(f"--image_list={names}", f"--mapping_path={mapping}", config=config)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("done 2, skipped 0, failed 0", result.stdout)
    boxes = [
      feature_io.read_from_file(os.path.join(self.features, f"img{i}.delf")).descriptors
      for i in (0, 1)
    ]
    aggregator = aggregation.Aggregator(_config(ASMK_STAR, regional=True), CODEBOOK)
    want = aggregator.aggregate(np.concatenate(boxes), [5, 5])
    got = aggregation.read_aggregated(os.path.join(out, "a.rasmk_star"))
    self.assertAllEqual(got[0], want[0])
    self.assertAllEqual(got[1], want[1])
    result, _ = self._run(config=config)
    testutil.assert_one_line_error(
      self, "aggregate", result, r".*r\.pbtxt: use_regional_aggregation needs"
    )

  def test_binarised_input_is_a_recorded_failure(self):
    feature_io.write_to_file(
      os.path.join(self.features, "img0.delf"),
      np.zeros([2, 2]),
      np.ones(2),
      np.ones([2, 2], np.uint8),
      np.ones(2),
    )
    result, out = self._run()
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn("done 3, skipped 0, failed 1", result.stdout)
    with open(os.path.join(out, "failures.tsv")) as f:
      self.assertIn("binarised local descriptors", f.read())

  def test_one_run_per_output_folder(self):
    out = os.path.join(self.dir, "out")
    os.makedirs(out, exist_ok=True)
    with dir_lock.DirLock(os.path.join(out, ".dolg_aggregate.lock")).acquire():
      result, _ = self._run()
    testutil.assert_one_line_error(
      self, "aggregate", result, ".*held by pid .*another dolg-aggregate writes there"
    )

  def test_bad_config_field(self):
    config = self._write_config('codebook_path: "codebook.npy" num_assignments: 0', "bad.pbtxt")
    result, _ = self._run(config=config)
    testutil.assert_one_line_error(
      self, "aggregate", result, r".*bad\.pbtxt: num_assignments: must be between 1"
    )

  def test_codebook_of_another_shape(self):
    np.save(os.path.join(self.dir, "small.npy"), CODEBOOK[:2])
    config = self._write_config('codebook_path: "small.npy"', "small.pbtxt")
    result, _ = self._run(config=config)
    testutil.assert_one_line_error(
      self, "aggregate", result, r".*small\.npy: codebook is \[2, 2\].*codebook_size is 3"
    )

  def test_bad_flag_and_missing_folder(self):
    result, _ = self._run("--log_interval=soon")
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn("Traceback", result.stderr)
    result = testutil.run_module(
      MODULE,
      f"--aggregation_config={self.config}",
      f"--features_dir={self.dir}/nowhere",
      f"--output_dir={self.dir}/o",
    )
    testutil.assert_one_line_error(
      self, "aggregate", result, ".*nowhere: local features folder not found"
    )


if __name__ == "__main__":
  tf.test.main()
