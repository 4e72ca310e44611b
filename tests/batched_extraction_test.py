"""Tests for batched inference: ShapeBatcher, the batched signatures, extract_batch, the pipeline.

Batching must not change a descriptor: every batched path is compared with
its one-image-per-forward counterpart (atol 1e-6). One tiny DOLG and one tiny
DELG export (testutil.SMALL_EXPORT_CONFIG: pyramid 0.5, 1; at most 80 px) are
shared by the whole file.
"""

import os
import random
import types
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import flagsaver, parameterized
from PIL import Image

from dolg_tf.data import gldv2_files
from dolg_tf.extraction import (
  batching,
  extract_features,
  failure_log,
  local_extractor,
  pipeline,
  postprocess,
  task_sources,
)
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import datum_io, descriptor_reading, savedmodel_contract
from tests import testutil

EXPORT_CONFIG = testutil.SMALL_EXPORT_CONFIG
SCALES = (0.5, 1.0)
ATOL = 1e-6
# (height, width) of the test images: three batching groups, all under 80 px.
SIZES = ((48, 64), (64, 48), (40, 40))
PER_FEATURE = (
  savedmodel_contract.BOXES,
  savedmodel_contract.FEATURES,
  savedmodel_contract.SCALES,
  savedmodel_contract.SCORES,
)


def _image(height, width, seed):
  return np.random.default_rng(seed).integers(0, 256, [height, width, 3], dtype=np.uint8)


def _write_config(folder, name, export_dir, extra=""):
  path = os.path.join(folder, name)
  with open(path, "w") as f:
    f.write(f'model_path: "{export_dir}"\nmax_image_size: 80\n{extra}')
  return path


def _write_images(folder, count, seed=0):
  """`count` PNG images cycling through SIZES; returns their paths in order."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i in range(count):
    height, width = SIZES[i % len(SIZES)]
    path = os.path.join(folder, f"img{i:02d}.png")
    Image.fromarray(_image(height, width, seed + i)).save(path)
    paths.append(path)
  return paths


def _without(loaded, name):
  """A stand-in for a loaded SavedModel that lacks signature `name` (an older export)."""
  return types.SimpleNamespace(signatures={k: v for k, v in loaded.signatures.items() if k != name})


# ----------------------------------------------------------------------------- ShapeBatcher


class ShapeBatcherTest(parameterized.TestCase, tf.test.TestCase):
  def test_groups_only_equal_keys_and_returns_a_full_group(self):
    batcher = batching.ShapeBatcher(batch_size=3)
    self.assertEqual(batcher.add("a", 1), [])
    self.assertEqual(batcher.add("b", 2), [])
    self.assertEqual(batcher.add("a", 3), [])
    self.assertEqual(batcher.add("c", 4), [])
    self.assertEqual(batcher.add("a", 5), [[1, 3, 5]])  # In arrival order.
    self.assertLen(batcher, 2)
    self.assertEqual(batcher.add("b", 6), [])
    self.assertEqual(batcher.flush(), [[2, 6], [4]])
    self.assertLen(batcher, 0)
    self.assertEqual(batcher.flush(), [])

  def test_image_shapes_as_keys(self):
    batcher = batching.ShapeBatcher(batch_size=2)
    self.assertEqual(batcher.add((48, 64, 3), "x"), [])
    self.assertEqual(batcher.add((64, 48, 3), "y"), [])  # Transposed: another size.
    self.assertEqual(batcher.add((48, 64, 3), "z"), [["x", "z"]])
    self.assertEqual(batcher.flush(), [["y"]])

  @parameterized.parameters(1, 2, 5)
  def test_a_group_comes_out_when_it_reaches_batch_size(self, batch_size):
    batcher = batching.ShapeBatcher(batch_size=batch_size)
    for i in range(batch_size - 1):
      self.assertEqual(batcher.add("k", i), [])
      self.assertLen(batcher, i + 1)
    self.assertEqual(batcher.add("k", "last"), [[*range(batch_size - 1), "last"]])
    self.assertLen(batcher, 0)
    self.assertEqual(batcher.flush(), [])

  def test_batch_size_one_returns_every_item_at_once(self):
    batcher = batching.ShapeBatcher(batch_size=1)
    for i, key in enumerate("abab"):
      self.assertEqual(batcher.add(key, i), [[i]])
      self.assertLen(batcher, 0)

  def test_max_pending_returns_the_largest_group_early(self):
    batcher = batching.ShapeBatcher(batch_size=3, max_pending=4)
    self.assertEqual(batcher.add("a", 1), [])
    self.assertEqual(batcher.add("b", 2), [])
    self.assertEqual(batcher.add("b", 3), [])
    self.assertEqual(batcher.add("c", 4), [])
    self.assertLen(batcher, 4)
    # A fifth item: over max_pending, so the largest group ("b", 2 items) goes out unfilled.
    self.assertEqual(batcher.add("d", 5), [[2, 3]])
    self.assertLen(batcher, 3)
    self.assertEqual(batcher.flush(), [[1], [4], [5]])

  def test_max_pending_with_equal_groups_returns_the_oldest(self):
    batcher = batching.ShapeBatcher(batch_size=2, max_pending=2)
    self.assertEqual(batcher.add("a", 1), [])
    self.assertEqual(batcher.add("b", 2), [])
    self.assertEqual(batcher.add("c", 3), [[1]])
    self.assertEqual(batcher.add("d", 4), [[2]])
    self.assertEqual(batcher.flush(), [[3], [4]])

  def test_flush_is_oldest_first(self):
    batcher = batching.ShapeBatcher(batch_size=2, max_pending=10)
    batcher.add("a", 1)
    batcher.add("b", 2)
    self.assertEqual(batcher.add("a", 3), [[1, 3]])
    batcher.add("a", 4)  # A new "a" group, younger than "b"'s.
    batcher.add("c", 5)
    self.assertEqual(batcher.flush(), [[2], [4], [5]])

  def test_default_max_pending_is_four_batches(self):
    batcher = batching.ShapeBatcher(batch_size=3)
    self.assertEqual(batcher.max_pending, 12)
    for i in range(12):  # 12 distinct keys: held, none full.
      self.assertEqual(batcher.add(i, i), [])
    self.assertLen(batcher, 12)
    self.assertEqual(batcher.add(12, 12), [[0]])
    self.assertLen(batcher, 12)

  def test_random_stream_invariants(self):
    rng = random.Random(0)
    batch_size, max_pending = 3, 5
    batcher = batching.ShapeBatcher(batch_size, max_pending)
    items = [(rng.choice("abcdefg"), i) for i in range(200)]
    batches = []
    for key, i in items:
      batches.extend(batcher.add(key, (key, i)))
      self.assertLessEqual(len(batcher), max_pending)
    batches.extend(batcher.flush())
    self.assertLen(batcher, 0)
    emitted = [item for batch in batches for item in batch]
    self.assertCountEqual(emitted, items)  # Each item exactly once.
    for batch in batches:
      self.assertBetween(len(batch), 1, batch_size)
      self.assertLen({key for key, _ in batch}, 1)  # One key per batch.
      order = [i for _, i in batch]
      self.assertEqual(order, sorted(order))  # Arrival order within a batch.

  @parameterized.named_parameters(
    ("zero_batch", 0, None),
    ("negative_batch", -2, None),
    ("max_pending_below_batch", 4, 3),
  )
  def test_bad_arguments(self, batch_size, max_pending):
    with self.assertRaises(ValueError):
      batching.ShapeBatcher(batch_size, max_pending)

  def test_max_pending_equal_to_batch_size_is_allowed(self):
    batcher = batching.ShapeBatcher(batch_size=2, max_pending=2)
    self.assertEqual(batcher.add("a", 1), [])
    self.assertEqual(batcher.add("a", 2), [[1, 2]])


# ----------------------------------------------------------------------------- DOLG


class _SharedExport:
  """One tiny export of MODEL for the class, its config (+ CONFIG_EXTRA) and an Extractor.

  A mixin, not a TestCase: no test runner (absltest under Bazel, pytest) runs
  it on its own; each test class lists it before tf.test.TestCase.
  """

  MODEL = ""
  CONFIG_EXTRA = ""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.export_dir = testutil.tiny_export(cls.MODEL, export_config=EXPORT_CONFIG)
    cls.loaded = testutil.tiny_loaded(cls.MODEL, export_config=EXPORT_CONFIG)
    cls.root = os.path.join(tf.compat.v1.test.get_temp_dir(), f"batched_{cls.MODEL}")
    os.makedirs(cls.root)
    cls.config = _write_config(cls.root, f"{cls.MODEL}.pbtxt", cls.export_dir, cls.CONFIG_EXTRA)
    cls.extractor = extractor_lib.Extractor.from_config_file(cls.config, saved_model=cls.loaded)

  def _extract_batch_spied(self, images):
    """(extract_batch results, extract results, the mock wrapping the batch signature)."""
    expected = [self.extractor.extract(image) for image in images]
    batch_signature = mock.Mock(wraps=self.extractor.runner.batch_signature)
    with mock.patch.object(self.extractor.runner, "batch_signature", batch_signature):
      got = self.extractor.extract_batch(images)
    return got, expected, batch_signature


class DolgBatchedExtractionTest(_SharedExport, tf.test.TestCase):
  MODEL = "dolg"

  def _inputs(self, indices=(0, 1)):
    return {
      savedmodel_contract.INPUT_SCALES: tf.constant(SCALES, tf.float32),
      savedmodel_contract.INPUT_GLOBAL_SCALES_IND: tf.constant(indices, tf.int32),
    }

  def _mixed_images(self):
    """Three 48x64, two 64x48 and one 40x40 image, interleaved."""
    shapes = [SIZES[0], SIZES[1], SIZES[0], SIZES[2], SIZES[1], SIZES[0]]
    return [_image(h, w, seed) for seed, (h, w) in enumerate(shapes)]

  def test_export_has_the_batched_signature(self):
    self.assertIn(savedmodel_contract.SERVE_GLOBAL_BATCH, self.loaded.signatures)
    self.assertNotIn(savedmodel_contract.SERVE_LOCAL_BATCH, self.loaded.signatures)
    self.assertEqual(self.extractor.batch_signature_name, savedmodel_contract.SERVE_GLOBAL_BATCH)
    batch = self.loaded.signatures[savedmodel_contract.SERVE_GLOBAL_BATCH]
    self.assertEqual(
      set(batch.structured_input_signature[1]), savedmodel_contract.BATCH_GLOBAL_INPUTS
    )

  def test_serve_global_batch_equals_serving_default_per_image(self):
    images = np.stack([_image(48, 64, seed) for seed in range(3)])
    for indices in ((0, 1), (1,)):
      with self.subTest(indices=indices):
        batch = self.loaded.signatures[savedmodel_contract.SERVE_GLOBAL_BATCH](
          input_images=tf.constant(images), **self._inputs(indices)
        )
        per_scale = batch[savedmodel_contract.GLOBAL_DESCRIPTORS].numpy()
        pooled = batch[savedmodel_contract.GLOBAL_DESCRIPTOR].numpy()
        self.assertEqual(per_scale.shape, (3, 2, 16))
        self.assertEqual(pooled.shape, (3, 16))
        for b, image in enumerate(images):
          single = self.loaded.signatures[savedmodel_contract.SERVING_DEFAULT](
            input_image=tf.constant(image), **self._inputs(indices)
          )
          self.assertAllClose(
            per_scale[b], single[savedmodel_contract.GLOBAL_DESCRIPTORS], atol=ATOL, rtol=0
          )
          self.assertAllClose(
            pooled[b], single[savedmodel_contract.GLOBAL_DESCRIPTOR], atol=ATOL, rtol=0
          )
        # Different images: different descriptors (the batch is not one image repeated).
        self.assertGreater(np.abs(pooled[0] - pooled[1]).max(), 1e-3)

  def test_extract_batch_equals_extract(self):
    images = self._mixed_images()
    got, expected, batch_signature = self._extract_batch_spied(images)
    self.assertLen(got, len(images))
    for g, e in zip(got, expected):
      self.assertEqual(g.dtype, np.float32)
      self.assertEqual(g.shape, (16,))
      self.assertAllClose(g, e, atol=ATOL, rtol=0)
    # One forward per size with two or more images (48x64: 3, 64x48: 2); 40x40 runs alone.
    self.assertEqual(batch_signature.call_count, 2)
    batch_sizes = sorted(
      call.kwargs[savedmodel_contract.INPUT_IMAGES].shape[0]
      for call in batch_signature.call_args_list
    )
    self.assertEqual(batch_sizes, [2, 3])

  def test_extract_batch_without_a_batch_signature_runs_images_one_by_one(self):
    old_export = _without(self.loaded, savedmodel_contract.SERVE_GLOBAL_BATCH)
    extractor = extractor_lib.Extractor.from_config_file(self.config, saved_model=old_export)
    self.assertIsNone(extractor.batch_signature_name)
    images = self._mixed_images()
    got = extractor.extract_batch(images)
    expected = [self.extractor.extract(image) for image in images]
    self.assertLen(got, len(images))
    for g, e in zip(got, expected):
      self.assertAllClose(g, e, atol=ATOL, rtol=0)

  def test_a_bad_image_fails_alone(self):
    images = self._mixed_images()
    bad_dtype = images[0].astype(np.float32)  # Same shape as the 48x64 group.
    bad_channels = np.zeros([48, 64, 4], np.uint8)
    batch = [images[0], bad_dtype, images[2], bad_channels, images[5], None, images[0].tolist()]
    got = self.extractor.extract_batch(batch)
    self.assertLen(got, 7)
    for i in (1, 3, 5, 6):
      self.assertIsInstance(got[i], ValueError)
      self.assertIn("expected a uint8 [H, W, 3] image", str(got[i]))
    for i in (0, 2, 4):
      self.assertNotIsInstance(got[i], Exception)
      self.assertAllClose(got[i], self.extractor.extract(batch[i]), atol=ATOL, rtol=0)

  def test_a_non_finite_descriptor_fails_its_image_only(self):
    images = self._mixed_images()[:3]  # 48x64, 64x48, 48x64
    real = self.extractor.run_model_batch

    def poison_second(group):
      outputs = real(group)
      if len(group) == 2:  # The 48x64 pair: NaN for its second image (images[2]).
        outputs[1][savedmodel_contract.GLOBAL_DESCRIPTORS] = np.full_like(
          outputs[1][savedmodel_contract.GLOBAL_DESCRIPTORS], np.nan
        )
      return outputs

    with mock.patch.object(self.extractor, "run_model_batch", side_effect=poison_second):
      got = self.extractor.extract_batch(images)
    self.assertIsInstance(got[2], postprocess.NonFiniteDescriptorError)
    for i in (0, 1):
      self.assertAllClose(got[i], self.extractor.extract(images[i]), atol=ATOL, rtol=0)

  def test_a_failing_batched_forward_falls_back_to_single_images(self):
    images = self._mixed_images()
    broken = mock.Mock(side_effect=tf.errors.ResourceExhaustedError(None, None, "OOM"))
    with mock.patch.object(self.extractor.runner, "batch_signature", broken):
      got = self.extractor.extract_batch(images)
    self.assertGreater(broken.call_count, 0)
    for g, image in zip(got, images):
      self.assertAllClose(g, self.extractor.extract(image), atol=ATOL, rtol=0)

  def test_pipeline_batches_write_the_same_descriptors(self):
    root = self.create_tempdir().full_path
    paths = _write_images(os.path.join(root, "images"), 10)
    with open(os.path.join(root, "images", "broken.png"), "wb") as f:
      f.write(b"not an image")
    tasks = task_sources.tasks_from_paths(task_sources.list_images(os.path.join(root, "images")))
    single_dir, batch_dir = os.path.join(root, "single"), os.path.join(root, "batched")
    single = pipeline.run_extraction(self.extractor, tasks, single_dir, batch_size=1)
    extract_batch = mock.Mock(wraps=self.extractor.extract_batch)
    with mock.patch.object(self.extractor, "extract_batch", extract_batch):
      batched = pipeline.run_extraction(self.extractor, tasks, batch_dir, batch_size=4)
    for summary in (single, batched):
      self.assertEqual((summary.total, summary.done, summary.failed), (11, 10, 1))
      self.assertEqual(summary.exit_code, 0)
    # Batches of one size, at most 4 images each, really went through extract_batch.
    self.assertGreater(extract_batch.call_count, 0)
    for call in extract_batch.call_args_list:
      group = call.args[0]
      self.assertBetween(len(group), 2, 4)
      self.assertLen({image.shape for image in group}, 1)
    ids, matrix = descriptor_reading.read_descriptors(single_dir)
    batch_ids, batch_matrix = descriptor_reading.read_descriptors(batch_dir)
    self.assertEqual(ids, [task_sources.image_id_from_path(p) for p in paths])
    self.assertEqual(batch_ids, ids)
    self.assertEqual(matrix.shape, (10, 16))
    self.assertAllClose(batch_matrix, matrix, atol=ATOL, rtol=0)
    for path in (single_dir, batch_dir):
      rows = failure_log.read_failures(os.path.join(path, failure_log.FAILURES_FILE))
      self.assertEqual([r["image_id"] for r in rows], ["broken"])

  def test_command_refuses_batch_size_zero(self):
    out = os.path.join(self.create_tempdir().full_path, "out")
    images = os.path.join(self.root, "cli_images")
    _write_images(images, 1)
    result = testutil.run_module(
      "dolg_tf.extraction.extract_features",
      f"--config={self.config}",
      f"--images_dir={images}",
      f"--output_dir={out}",
      "--batch_size=0",
    )
    self.assertEqual(result.returncode, 2, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    self.assertLen(lines, 1, result.stderr)
    self.assertIn("--batch_size", lines[0])
    self.assertIn("error", lines[0])
    self.assertNotIn("Traceback", result.stderr)
    self.assertFalse(os.path.exists(out))  # Refused before the output folder is made.

  def _gldv2_layout(self, root, ids):
    """Images of `ids` in GLDv2's layout (<a>/<b>/<c>/<id>.jpg); returns id -> path."""
    images = os.path.join(root, "gldv2")
    paths = {}
    for seed, image_id in enumerate(ids):
      folder = os.path.join(images, image_id[0], image_id[1], image_id[2])
      os.makedirs(folder, exist_ok=True)
      paths[image_id] = os.path.join(folder, image_id + ".jpg")
      height, width = SIZES[seed % 2]
      Image.fromarray(_image(height, width, 100 + seed)).save(paths[image_id])
    return images, paths

  def _run_command(self, **flag_values):
    extract_features.define_flags()
    if not extract_features.FLAGS.is_parsed():
      extract_features.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(config=self.config, **flag_values):
      return extract_features.main(["extract_features"])

  def test_gldv2_csv_input(self):
    root = self.create_tempdir().full_path
    present = ["0a1b2c3d4e5f6071", "0a1ffff000011112", "fedcba9876543210"]
    missing = "abc0123456789def"
    images, paths = self._gldv2_layout(root, present)
    csv_path = os.path.join(root, "index.csv")
    with open(csv_path, "w") as f:
      f.write("id,url,landmark_id\n")
      for image_id in [present[0], missing, *present[1:]]:
        f.write(f"{image_id},https://example.com/{image_id}.jpg,7\n")
    self.assertEqual(task_sources.read_csv_image_ids(csv_path), [present[0], missing, *present[1:]])
    self.assertEqual(gldv2_files.image_path(images, present[0]), paths[present[0]])
    out = os.path.join(root, "out")
    code = self._run_command(
      gldv2_csv_path=csv_path, images_dir=images, output_dir=out, batch_size=2
    )
    self.assertEqual(code, 0)  # Some images have descriptors.
    ids, matrix = descriptor_reading.read_descriptors(out)
    self.assertEqual(ids, sorted(present))
    for image_id, row in zip(ids, matrix):
      self.assertAllClose(row, self.extractor.extract_from_file(paths[image_id]), atol=ATOL, rtol=0)
      datum = datum_io.read_from_file(os.path.join(out, image_id + self.extractor.suffix))
      self.assertAllClose(datum, row, atol=0, rtol=0)
    rows = failure_log.read_failures(os.path.join(out, failure_log.FAILURES_FILE))
    self.assertEqual([r["image_id"] for r in rows], [missing])
    # Reported at its nested GLDv2 path.
    self.assertEqual(rows[0]["path"], os.path.join(images, "a", "b", "c", missing + ".jpg"))
    self.assertNotEqual(rows[0]["reason"], "")

  def test_gldv2_csv_with_no_image_found_exits_with_1(self):
    root = self.create_tempdir().full_path
    images, _ = self._gldv2_layout(root, ["0a1b2c3d4e5f6071"])
    csv_path = os.path.join(root, "test.csv")
    with open(csv_path, "w") as f:
      f.write("id\n1234567890abcdef\n")
    out = os.path.join(root, "out")
    code = self._run_command(gldv2_csv_path=csv_path, images_dir=images, output_dir=out)
    self.assertEqual(code, 1)
    rows = failure_log.read_failures(os.path.join(out, failure_log.FAILURES_FILE))
    self.assertEqual([r["image_id"] for r in rows], ["1234567890abcdef"])
    self.assertEqual([n for n in os.listdir(out) if n.endswith(self.extractor.suffix)], [])


# ----------------------------------------------------------------------------- DELG


class DelgBatchedExtractionTest(_SharedExport, tf.test.TestCase):
  MODEL = "delg"
  CONFIG_EXTRA = "use_local_features: true\nlocal_config { max_feature_num: 40 }\n"

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.images = np.stack([_image(48, 64, seed) for seed in range(3)])

  def _inputs(self, max_feature_num, threshold, indices=(0, 1)):
    return {
      savedmodel_contract.INPUT_SCALES: tf.constant(SCALES, tf.float32),
      savedmodel_contract.INPUT_MAX_FEATURE_NUM: tf.constant(max_feature_num, tf.int32),
      savedmodel_contract.INPUT_ABS_THRES: tf.constant(threshold, tf.float32),
      savedmodel_contract.INPUT_GLOBAL_SCALES_IND: tf.constant(indices, tf.int32),
    }

  def _single(self, image, max_feature_num, threshold):
    outputs = self.loaded.signatures[savedmodel_contract.SERVING_DEFAULT](
      input_image=tf.constant(image), **self._inputs(max_feature_num, threshold)
    )
    return {k: v.numpy() for k, v in outputs.items()}

  def _assert_results_equal(self, got, want):
    self.assertNotIsInstance(got, Exception)
    self.assertCountEqual(got, want)
    for key in want:
      self.assertEqual(got[key].shape, want[key].shape, key)
      self.assertAllClose(got[key], want[key], atol=ATOL, rtol=0, msg=key)

  def test_export_has_both_batched_signatures(self):
    self.assertContainsSubset(
      {savedmodel_contract.SERVE_GLOBAL_BATCH, savedmodel_contract.SERVE_LOCAL_BATCH},
      set(self.loaded.signatures),
    )
    self.assertEqual(self.extractor.batch_signature_name, savedmodel_contract.SERVE_LOCAL_BATCH)
    local = self.loaded.signatures[savedmodel_contract.SERVE_LOCAL_BATCH]
    self.assertEqual(
      set(local.structured_input_signature[1]), savedmodel_contract.BATCH_LOCAL_GLOBAL_INPUTS
    )

  def test_serve_global_batch_equals_serve_global_per_image(self):
    inputs = {
      savedmodel_contract.INPUT_SCALES: tf.constant(SCALES, tf.float32),
      savedmodel_contract.INPUT_GLOBAL_SCALES_IND: tf.constant([0, 1], tf.int32),
    }
    batch = self.loaded.signatures[savedmodel_contract.SERVE_GLOBAL_BATCH](
      input_images=tf.constant(self.images), **inputs
    )
    self.assertEqual(batch[savedmodel_contract.GLOBAL_DESCRIPTORS].shape, (3, 2, 16))
    self.assertEqual(batch[savedmodel_contract.GLOBAL_DESCRIPTOR].shape, (3, 16))
    for b, image in enumerate(self.images):
      single = self.loaded.signatures[savedmodel_contract.SERVE_GLOBAL](
        input_image=tf.constant(image), **inputs
      )
      for name in (savedmodel_contract.GLOBAL_DESCRIPTORS, savedmodel_contract.GLOBAL_DESCRIPTOR):
        self.assertAllClose(batch[name][b], single[name], atol=ATOL, rtol=0, msg=name)

  def test_serve_local_batch_equals_serving_default_per_image(self):
    # A threshold keeping about half of the first image's features: images
    # keep different numbers of features, so some rows of the batch are padding.
    threshold = float(
      np.median(self._single(self.images[0], 10_000, -1e9)[savedmodel_contract.SCORES])
    )
    batch = self.loaded.signatures[savedmodel_contract.SERVE_LOCAL_BATCH](
      input_images=tf.constant(self.images), **self._inputs(10_000, threshold)
    )
    batch = {k: v.numpy() for k, v in batch.items()}
    num_features = batch[savedmodel_contract.NUM_FEATURES]
    self.assertEqual(num_features.shape, (3,))
    self.assertEqual(num_features.dtype, np.int32)
    width = batch[savedmodel_contract.SCORES].shape[1]
    self.assertEqual(batch[savedmodel_contract.BOXES].shape, (3, width, 4))
    self.assertEqual(batch[savedmodel_contract.FEATURES].shape, (3, width, 8))
    self.assertEqual(batch[savedmodel_contract.SCALES].shape, (3, width))
    self.assertEqual(batch[savedmodel_contract.GLOBAL_DESCRIPTORS].shape, (3, 2, 16))
    self.assertEqual(batch[savedmodel_contract.GLOBAL_DESCRIPTOR].shape, (3, 16))
    self.assertLess(int(num_features.min()), width)  # Padding exists.
    self.assertGreater(int(num_features.min()), 0)
    for b, image in enumerate(self.images):
      single = self._single(image, 10_000, threshold)
      count = int(num_features[b])
      self.assertLen(single[savedmodel_contract.SCORES], count)
      self.assertTrue(np.all(single[savedmodel_contract.SCORES] >= threshold))
      for name in PER_FEATURE:
        self.assertAllClose(batch[name][b, :count], single[name], atol=ATOL, rtol=0, msg=name)
      for name in (savedmodel_contract.GLOBAL_DESCRIPTORS, savedmodel_contract.GLOBAL_DESCRIPTOR):
        self.assertAllClose(batch[name][b], single[name], atol=ATOL, rtol=0, msg=name)

  def test_serve_local_batch_caps_at_max_feature_num(self):
    batch = self.loaded.signatures[savedmodel_contract.SERVE_LOCAL_BATCH](
      input_images=tf.constant(self.images), **self._inputs(5, -1e9)
    )
    self.assertAllEqual(batch[savedmodel_contract.NUM_FEATURES], [5, 5, 5])
    self.assertEqual(batch[savedmodel_contract.FEATURES].shape, (3, 5, 8))
    for b, image in enumerate(self.images):
      single = self._single(image, 5, -1e9)
      for name in PER_FEATURE:
        self.assertAllClose(batch[name][b], single[name], atol=ATOL, rtol=0, msg=name)

  def _mixed_images(self):
    """Two 48x64, two 64x48 images and one 100x80 (resized to 80x64) one, interleaved."""
    shapes = [SIZES[0], SIZES[1], (100, 80), SIZES[0], SIZES[1]]
    return [_image(h, w, 10 + seed) for seed, (h, w) in enumerate(shapes)]

  def test_extract_batch_equals_extract(self):
    images = self._mixed_images()
    got, expected, batch_signature = self._extract_batch_spied(images)
    self.assertEqual(batch_signature.call_count, 2)  # 48x64 and 64x48 pairs.
    self.assertLen(got, len(images))
    for g, e in zip(got, expected):
      self._assert_results_equal(g, e)
      self.assertEqual(g["descriptors"].shape[1], 8)
      self.assertBetween(len(g["scores"]), 1, 40)

  def test_extract_batch_without_a_batch_signature_runs_images_one_by_one(self):
    old_export = _without(self.loaded, savedmodel_contract.SERVE_LOCAL_BATCH)
    extractor = extractor_lib.Extractor.from_config_file(self.config, saved_model=old_export)
    self.assertIsNone(extractor.batch_signature_name)
    images = self._mixed_images()
    for g, image in zip(extractor.extract_batch(images), images):
      self._assert_results_equal(g, self.extractor.extract(image))

  def test_a_too_small_image_fails_alone(self):
    images = self._mixed_images()
    batch = [images[0], np.zeros([5, 30, 3], np.uint8), images[3]]
    got = self.extractor.extract_batch(batch)
    self.assertIsInstance(got[1], Exception)
    self.assertIn("too small", str(got[1]))
    for i in (0, 2):
      self._assert_results_equal(got[i], self.extractor.extract(batch[i]))

  def test_pipeline_batches_write_the_same_files(self):
    root = self.create_tempdir().full_path
    paths = _write_images(os.path.join(root, "images"), 9, seed=20)
    tasks = task_sources.tasks_from_paths(paths)
    single_dir, batch_dir = os.path.join(root, "single"), os.path.join(root, "batched")
    self.assertEqual(pipeline.run_extraction(self.extractor, tasks, single_dir).done, 9)
    extract_batch = mock.Mock(wraps=self.extractor.extract_batch)
    with mock.patch.object(self.extractor, "extract_batch", extract_batch):
      summary = pipeline.run_extraction(self.extractor, tasks, batch_dir, batch_size=4)
    self.assertEqual((summary.done, summary.failed), (9, 0))
    self.assertGreater(extract_batch.call_count, 0)
    for task in tasks:
      want = local_extractor.read_local_features(
        os.path.join(single_dir, task.image_id + self.extractor.local_suffix)
      )
      got = local_extractor.read_local_features(
        os.path.join(batch_dir, task.image_id + self.extractor.local_suffix)
      )
      self.assertGreater(len(want.locations), 0)
      for name, a, b in zip(want._fields, got, want):
        self.assertEqual(a.shape, b.shape, name)
        self.assertAllClose(a, b, atol=ATOL, rtol=0, msg=name)
    suffix = self.extractor.global_suffix
    ids, matrix = descriptor_reading.read_descriptors(single_dir, suffix=suffix)
    batch_ids, batch_matrix = descriptor_reading.read_descriptors(batch_dir, suffix=suffix)
    self.assertEqual(ids, [t.image_id for t in tasks])
    self.assertEqual(batch_ids, ids)
    self.assertAllClose(batch_matrix, matrix, atol=ATOL, rtol=0)


if __name__ == "__main__":
  tf.test.main()
