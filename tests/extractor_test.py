"""Tests for dolg_tf.extraction.extractor (global-only Extractor on a tiny exported DOLG)."""

import json
import os
import re
import shutil
from unittest import mock

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.extraction import pipeline, postprocess, task_sources
from dolg_tf.io import config_io, datum_io, image_loading, savedmodel_contract
from dolg_tf.utils import images
from tests import testutil

TINY = testutil.TINY_DOLG
SCALES = (0.7071, 1.0, 1.4142)
GlobalConfig = config_io.DolgConfig.GlobalConfig


def _config_text(model_path, extra="", global_extra="", max_image_size=-1):
  return f"""
    model_path: "{model_path}"
    image_scales: 0.7071
    image_scales: 1.0
    image_scales: 1.4142
    max_image_size: {max_image_size}
    {extra}
    global_config {{
      {global_extra}
    }}
  """


class ExtractorTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # The default export pyramid is SCALES (the official one).
    cls.export_dir = testutil.tiny_export("dolg")
    cls.base = os.path.dirname(cls.export_dir)
    cls.loaded = tf.saved_model.load(cls.export_dir)
    cls.default = cls._make(_config_text(cls.export_dir), load=True)

  @classmethod
  def _make(cls, text, name="c.pbtxt", load=False):
    """An extractor for a config text; shares the loaded SavedModel unless `load`."""
    path = os.path.join(tf.compat.v1.test.get_temp_dir(), name)
    with open(path, "w") as f:
      f.write(text)
    shared = None if load else cls.loaded
    return extractor_lib.Extractor.from_config_file(path, saved_model=shared)

  def _signature(self, image, indices=(0, 1, 2)):
    return self.loaded.signatures["serving_default"](
      input_image=tf.constant(image),
      input_scales=tf.constant(SCALES, tf.float32),
      input_global_scales_ind=tf.constant(indices, tf.int32),
    )

  def _image(self, height=48, width=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, [height, width, 3], dtype=np.uint8)

  def test_average_equals_the_saved_models_own_pooling(self):
    image = self._image()
    descriptor = self.default.extract(image)
    expected = self._signature(image)["global_descriptor"].numpy()
    self.assertEqual(descriptor.dtype, np.float32)
    self.assertEqual(descriptor.shape, (16,))
    self.assertAllClose(descriptor, expected, atol=1e-6)
    self.assertAllClose(np.linalg.norm(descriptor), 1.0, atol=1e-6)
    self.assertEqual(self.default.output_dim, 16)
    self.assertEqual(self.default.signature_name, "serving_default")

  def test_only_the_selected_scales_are_pooled(self):
    extractor = self._make(
      _config_text(self.export_dir, global_extra="image_scales_ind: 2 image_scales_ind: 0"),
      "s.pbtxt",
    )
    self.assertAllClose(extractor.scales, [1.4142, 0.7071])
    image = self._image(seed=1)
    expected = self._signature(image, (0, 2))["global_descriptor"].numpy()
    self.assertAllClose(extractor.extract(image), expected, atol=1e-6)

  def test_gem_scale_pooling_is_the_signed_generalised_mean(self):
    extractor = self._make(
      _config_text(self.export_dir, global_extra="scale_pooling: GEM gem_p: 4.0"), "g.pbtxt"
    )
    image = self._image(seed=2)
    per_scale = self._signature(image)["global_descriptors"].numpy().astype(np.float64)
    per_scale /= np.linalg.norm(per_scale, axis=1, keepdims=True)
    m = np.mean(np.sign(per_scale) * np.abs(per_scale) ** 4, axis=0)
    g = np.sign(m) * np.abs(m) ** 0.25
    descriptor = extractor.extract(image)
    self.assertAllClose(descriptor, g / np.linalg.norm(g), atol=1e-6)
    self.assertGreater(np.sum(descriptor < 0), 0)  # signed components survive
    average = self.default.extract(image)
    self.assertLess(float(np.dot(descriptor, average)), 1.0 - 1e-7)

  def test_pool_scales_by_hand(self):
    per_scale = np.array([[3.0, -4.0], [0.0, 2.0]])
    # Rows normalised: [0.6, -0.8], [0, 1]; average [0.3, 0.1].
    average = postprocess.pool_scales(per_scale, GlobalConfig.AVERAGE)
    self.assertAllClose(average, np.array([0.3, 0.1]) / np.hypot(0.3, 0.1), atol=1e-6)
    # p = 1 is the average; p = 2: m = [0.18, (-0.64 + 1) / 2 = 0.18].
    self.assertAllClose(postprocess.pool_scales(per_scale, GlobalConfig.GEM, 1.0), average)
    gem2 = postprocess.pool_scales(per_scale, GlobalConfig.GEM, 2.0)
    self.assertAllClose(gem2, [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    negative = postprocess.pool_scales(-per_scale, GlobalConfig.GEM, 3.0)
    self.assertAllClose(negative, -postprocess.pool_scales(per_scale, GlobalConfig.GEM, 3.0))
    with self.assertRaisesRegex(ValueError, "p > 0"):
      postprocess.pool_scales(per_scale, GlobalConfig.GEM, 0.0)

  def test_pca_and_whitening_match_numpy(self):
    folder = self.create_tempdir().full_path
    rng = np.random.default_rng(4)
    mean = rng.normal(size=16).astype(np.float32) * 0.1
    projection = np.linalg.qr(rng.normal(size=[16, 16]))[0].astype(np.float32)
    variances = np.sort(rng.uniform(0.01, 1.0, size=16)).astype(np.float32)[::-1].copy()
    datum_io.write_to_file(os.path.join(folder, "mean.datum"), mean)
    np.save(os.path.join(folder, "proj.npy"), projection)
    datum_io.write_to_file(os.path.join(folder, "var.datum"), variances)
    pca = f"""
      use_pca: true
      pca_parameters {{
        mean_path: "{folder}/mean.datum"
        projection_matrix_path: "{folder}/proj.npy"
        pca_dim: 8
        use_whitening: true
        pca_variances_path: "{folder}/var.datum"
      }}
    """
    extractor = self._make(_config_text(self.export_dir, global_extra=pca), "p.pbtxt")
    image = self._image(seed=5)
    pooled = self.default.extract(image).astype(np.float64)
    expected = projection[:8].astype(np.float64) @ (pooled - mean)
    expected /= np.sqrt(variances[:8].astype(np.float64) + postprocess.WHITENING_EPSILON)
    expected /= np.linalg.norm(expected)
    descriptor = extractor.extract(image)
    self.assertEqual(descriptor.shape, (8,))
    self.assertEqual(extractor.output_dim, 8)
    self.assertAllClose(descriptor, expected, atol=1e-5)
    # Without whitening: projection only.
    plain = postprocess.apply_pca(pooled, mean, projection, 8)
    expected_plain = projection[:8] @ (pooled - mean)
    self.assertAllClose(plain, expected_plain / np.linalg.norm(expected_plain), atol=1e-5)

  def test_pca_files_of_the_wrong_shape_are_named(self):
    folder = self.create_tempdir().full_path
    np.save(os.path.join(folder, "mean.npy"), np.zeros(16, np.float32))
    np.save(os.path.join(folder, "proj.npy"), np.zeros([4, 16], np.float32))
    pca = f"""use_pca: true pca_parameters {{ mean_path: "{folder}/mean.npy"
      projection_matrix_path: "{folder}/proj.npy" pca_dim: 8 }}"""
    with self.assertRaisesRegex(ValueError, "proj.npy: pca_dim 8 exceeds the 4 rows"):
      self._make(_config_text(self.export_dir, global_extra=pca), "bad_pca.pbtxt")
    pca = pca.replace("proj.npy", "absent.npy")
    with self.assertRaisesRegex(FileNotFoundError, "absent.npy"):
      self._make(_config_text(self.export_dir, global_extra=pca), "bad_pca2.pbtxt")

  def test_crop_and_resize_are_honoured(self):
    folder = self.create_tempdir().full_path
    image = self._image(90, 60, seed=6)
    path = os.path.join(folder, "im.png")
    Image.fromarray(image).save(path)
    extractor = self._make(_config_text(self.export_dir, max_image_size=32), "r.pbtxt")
    box = (10.4, 20.0, 50.0, 70.0)  # x1, y1, x2, y2 -> rows 20:70, cols 10:50
    prepared = extractor.load_and_preprocess(path, box)
    cropped = image[20:70, 10:50]
    # DELF scales max_image_size by the crop's share of the largest side: 32 * 50 / 90.
    expected_image, _ = image_loading.resize_image(cropped, 32, resize_factor=50 / 90)
    self.assertEqual(prepared.shape, (18, 14, 3))  # 50x40 -> largest side round(17.8)
    self.assertAllEqual(prepared, expected_image)
    expected = self._signature(expected_image)["global_descriptor"].numpy()
    self.assertAllClose(extractor.extract_from_file(path, box), expected, atol=1e-6)
    # Uncropped: the whole image resized to 32x21; square: 32x32.
    self.assertEqual(extractor.load_and_preprocess(path).shape, (32, 21, 3))
    square = self._make(
      _config_text(self.export_dir, extra="use_square_images: true", max_image_size=32), "q.pbtxt"
    )
    self.assertEqual(square.load_and_preprocess(path).shape, (32, 32, 3))
    with self.assertRaisesRegex(images.ImageError, "im.png: empty crop box"):
      extractor.load_and_preprocess(path, (70, 0, 80, 10))

  def test_missing_model_is_named(self):
    with self.assertRaisesRegex(FileNotFoundError, "model_path: '/nonexistent/model'"):
      self._make(_config_text("/nonexistent/model"), "m.pbtxt", load=True)
    folder = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError, "no saved_model.pb"):
      self._make(_config_text(folder), "m2.pbtxt", load=True)

  def _export_copy(self, config_json=None, legacy_json=None):
    """A copy of the export whose assets.extra holds only the given JSON files."""
    folder = os.path.join(self.create_tempdir().full_path, "model")
    shutil.copytree(self.export_dir, folder)
    assets = os.path.join(folder, "assets.extra")
    shutil.rmtree(assets, ignore_errors=True)
    os.makedirs(assets)
    for asset, payload in (
      (savedmodel_contract.CONFIG_ASSET, config_json),
      (savedmodel_contract.LEGACY_CONFIG_ASSET, legacy_json),
    ):
      if payload is not None:
        with open(os.path.join(folder, asset), "w") as f:
          json.dump(payload, f)
    return folder

  def _write_config(self, text):
    return self.create_tempfile("defaults.pbtxt", content=text).full_path

  def test_pyramid_and_sizes_come_from_the_saved_model(self):
    model = self._export_copy(
      {
        "model": {},
        "export": {"image_scales": [0.5, 1.0], "max_image_size": 32, "min_image_size": 24},
      }
    )
    path = self._write_config(f'model_path: "{model}"\nglobal_config {{ image_scales_ind: 1 }}\n')
    with mock.patch.object(extractor_lib.logging, "info") as info:
      extractor = extractor_lib.Extractor.from_config_file(path)  # loads the copy
    lines = [c.args[0] % c.args[1:] for c in info.call_args_list]
    lines = [line for line in lines if "from the SavedModel" in line]
    self.assertLen(lines, 1)
    self.assertIn("image_scales=[0.5, 1.0], max_image_size=32, min_image_size=24", lines[0])
    self.assertIn(path, lines[0])
    self.assertAllClose(extractor.image_scales, [0.5, 1.0])
    self.assertAllClose(extractor.scales, [1.0])
    self.assertEqual((extractor.max_image_size, extractor.min_image_size), (32, 24))
    self.assertEqual(extractor.preprocess(self._image(64, 40)).shape, (32, 20, 3))
    self.assertEqual(extractor.preprocess(self._image(10, 20)).shape, (12, 24, 3))
    image = extractor.preprocess(self._image(seed=7))
    expected = self._signature(image, (1,))["global_descriptor"].numpy()
    self.assertAllClose(extractor.extract(image), expected, atol=1e-6)
    # Values the config sets win; max_image_size: -1 set explicitly is kept.
    path = self._write_config(f'model_path: "{model}"\nimage_scales: 1.0\nmax_image_size: -1\n')
    explicit = extractor_lib.Extractor.from_config_file(path, saved_model=self.loaded)
    self.assertAllClose(explicit.image_scales, [1.0])
    self.assertEqual((explicit.max_image_size, explicit.min_image_size), (-1, 24))

  def test_older_exports_give_their_export_config(self):
    model = self._export_copy(legacy_json={"image_scales": [1.0, 2.0], "max_image_size": 50})
    path = self._write_config(f'model_path: "{model}"\n')
    extractor = extractor_lib.Extractor.from_config_file(path, saved_model=self.loaded)
    self.assertAllClose(extractor.scales, [1.0, 2.0])
    self.assertEqual((extractor.max_image_size, extractor.min_image_size), (50, -1))

  def test_no_pyramid_anywhere_is_one_line_naming_the_config(self):
    model = self._export_copy()
    path = self._write_config(f'model_path: "{model}"\n')
    with self.assertRaisesRegex(ValueError, "^" + path + ": image_scales: empty.*[^\n]$"):
      extractor_lib.Extractor.from_config_file(path, saved_model=self.loaded)
    # image_scales_ind is checked against the SavedModel's pyramid.
    model = self._export_copy({"export": {"image_scales": [1.0]}})
    path = self._write_config(f'model_path: "{model}"\nglobal_config {{ image_scales_ind: 1 }}\n')
    with self.assertRaisesRegex(ValueError, "image_scales_ind\\[0\\]: 1 is out of range for 1"):
      extractor_lib.Extractor.from_config_file(path, saved_model=self.loaded)
    bad = self._export_copy({"export": {"image_scales": "1.0"}})
    path = self._write_config(f'model_path: "{bad}"\n')
    with self.assertRaisesRegex(ValueError, "config.json: export.image_scales: expected a list"):
      extractor_lib.Extractor.from_config_file(path, saved_model=self.loaded)

  def test_a_dolg_export_has_no_local_features(self):
    path = self._write_config(
      f'model_path: "{self.export_dir}"\nuse_local_features: true\n'
      'local_config { max_feature_num: 4 }\n'
    )
    with self.assertRaisesRegex(ValueError, "is it a DELG export"):
      extractor_lib.Extractor.from_config_file(path, saved_model=self.loaded)
    self.assertIsNone(self.default.make_writer(self.get_temp_dir()))

  def test_rejects_non_uint8_images(self):
    with self.assertRaisesRegex(ValueError, "uint8"):
      self.default.extract(np.zeros([8, 8, 3], np.float32))

  def test_non_finite_descriptors_are_refused_and_the_pipeline_records_the_image(self):
    extractor = self._make(_config_text(self.export_dir), name="nan.pbtxt")
    per_scale = np.full([3, 16], 0.25, np.float32)
    per_scale[1, 3] = np.inf
    outputs = {savedmodel_contract.GLOBAL_DESCRIPTORS: per_scale}
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "bad.png")
    Image.fromarray(self._image()).save(path)
    out = os.path.join(folder, "out")
    with mock.patch.object(extractor, "run_model", return_value=outputs):
      with self.assertRaisesRegex(
        ValueError,
        r"^non-finite global descriptor: 16 of 16 values are NaN or inf \(the 48x40 input image\)$",
      ):
        extractor.extract(self._image())
      with self.assertRaisesRegex(
        postprocess.NonFiniteDescriptorError,
        "^" + re.escape(path) + ": non-finite global descriptor",
      ):
        extractor.extract_from_file(path)
      summary = pipeline.run_extraction(
        extractor, [task_sources.ImageTask("bad", path)], out, num_threads=1
      )
    self.assertEqual((summary.done, summary.failed), (0, 1))
    self.assertEqual(summary.failures[0][:2], ("bad", path))
    self.assertIn("non-finite global descriptor", summary.failures[0][2])
    self.assertNotIn("bad" + extractor.global_suffix, os.listdir(out))
    # A finite answer again: described as usual.
    self.assertTrue(np.isfinite(extractor.extract(self._image())).all())


if __name__ == "__main__":
  tf.test.main()
