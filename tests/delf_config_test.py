"""Tests for DELF's DelfConfig: protos/delf_config.proto, its translation and per-scale PCA."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from google.protobuf import text_format

from dolg_tf.extraction import postprocess
from dolg_tf.io import config_io
from dolg_tf.protos import delf_config_pb2, dolg_config_pb2

# The layout of DELF's delg/r50delg_gldv2clean_config.pbtxt.
_DELG_R50 = """
use_local_features: true
use_global_features: true
model_path: "parameters/r50delg_gldv2clean_20200914"
image_scales: 0.25
image_scales: 0.35355338
image_scales: 0.5
image_scales: 0.70710677
image_scales: 1.0
image_scales: 1.4142135
image_scales: 2.0
delf_local_config {
  use_pca: false
  max_feature_num: 1000
  score_threshold: 454.6
}
delf_global_config {
  use_pca: false
  image_scales_ind: 3
  image_scales_ind: 4
  image_scales_ind: 5
}
max_image_size: 1024
"""


class DelfConfigProtoTest(tf.test.TestCase):
  def test_field_numbers_and_defaults_are_delfs(self):
    numbers = {f.name: f.number for f in delf_config_pb2.DelfConfig.DESCRIPTOR.fields}
    self.assertEqual(
      numbers,
      {
        "model_path": 1,
        "image_scales": 2,
        "delf_local_config": 3,
        "max_image_size": 4,
        "min_image_size": 5,
        "use_square_images": 6,
        "use_local_features": 7,
        "use_global_features": 8,
        "delf_global_config": 9,
        "is_tf2_exported": 10,
      },
    )
    config = delf_config_pb2.DelfConfig()
    self.assertTrue(config.use_local_features)
    self.assertFalse(config.use_global_features)
    self.assertFalse(config.is_tf2_exported)
    self.assertTrue(config.delf_local_config.use_pca)
    self.assertEqual(config.delf_local_config.score_threshold, 100.0)
    self.assertEqual(config.delf_local_config.iou_threshold, 1.0)
    self.assertTrue(config.delf_global_config.use_pca)
    self.assertEqual(config.max_image_size, -1)
    local = {f.name: f.number for f in delf_config_pb2.DelfLocalFeatureConfig.DESCRIPTOR.fields}
    self.assertEqual(local["use_resized_coordinates"], 7)
    glob = {f.name: f.number for f in delf_config_pb2.DelfGlobalFeatureConfig.DESCRIPTOR.fields}
    self.assertEqual(glob, {"use_pca": 1, "pca_parameters": 2, "image_scales_ind": 3})

  def test_package_differs_from_delfs(self):
    self.assertEqual(
      delf_config_pb2.DelfConfig.DESCRIPTOR.full_name, "dolg_tf.protos.delf.DelfConfig"
    )


class TranslationTest(tf.test.TestCase, parameterized.TestCase):
  def _write(self, text, name="delf.pbtxt"):
    return self.create_tempfile(name, content=text).full_path

  def test_delg_r50_config(self):
    path = self._write(_DELG_R50)
    for load in (config_io.load_delf_config, config_io.load_any_config):
      config = load(path)
      self.assertEqual(config.model_path, "parameters/r50delg_gldv2clean_20200914")
      self.assertAllClose(config.image_scales, [0.25, 0.35355338, 0.5, 0.70710677, 1, 1.4142135, 2])
      self.assertEqual(config.max_image_size, 1024)
      self.assertEqual(config.min_image_size, -1)
      self.assertTrue(config.use_local_features)
      self.assertTrue(config.use_global_features)
      self.assertEqual(list(config.global_config.image_scales_ind), [3, 4, 5])
      self.assertFalse(config.global_config.use_pca)
      self.assertTrue(config.global_config.pca_per_scale)
      self.assertFalse(config.local_config.use_pca)
      self.assertEqual(config.local_config.max_feature_num, 1000)
      self.assertAllClose(config.local_config.score_threshold, 454.6)
      self.assertEqual(config.global_descriptor_suffix, ".delg_global")
      self.assertEqual(config.local_descriptor_suffix, ".delg_local")

  def test_pca_and_other_fields(self):
    config = config_io.load_delf_config(
      self._write(
        """
        model_path: "m"
        image_scales: 1.0
        use_local_features: false
        use_global_features: true
        is_tf2_exported: true
        use_square_images: true
        min_image_size: 100
        delf_global_config {
          pca_parameters {
            mean_path: "mean.datum" projection_matrix_path: "proj.datum" pca_dim: 64
            use_whitening: true pca_variances_path: "var.datum"
          }
        }
        delf_local_config { use_resized_coordinates: true }
        """
      )
    )
    self.assertTrue(config.use_square_images)
    self.assertEqual(config.min_image_size, 100)
    self.assertFalse(config.use_local_features)
    pca = config.global_config.pca_parameters
    self.assertTrue(config.global_config.use_pca)  # DELF's default
    self.assertEqual(
      (pca.mean_path, pca.projection_matrix_path, pca.pca_dim, pca.pca_variances_path),
      ("mean.datum", "proj.datum", 64, "var.datum"),
    )
    self.assertTrue(pca.use_whitening)
    self.assertTrue(config.local_config.use_resized_coordinates)

  @parameterized.named_parameters(
    ("layer_name", 'delf_local_config { use_pca: false layer_name: "resnet_v1_50/block3" }',
     r"delf\.pbtxt: delf_local_config\.layer_name: not supported"),
    ("nms", "delf_local_config { use_pca: false iou_threshold: 0.8 }",
     r"delf_local_config\.iou_threshold: not supported"),
    ("pca_default_without_parameters", "delf_local_config { max_feature_num: 10 }",
     r"delf\.pbtxt: delf_local_config\.pca_parameters\.mean_path: required when use_pca"),
    ("scale_index", "use_global_features: true delf_local_config { use_pca: false } "
     "delf_global_config { use_pca: false image_scales_ind: 4 }",
     r"delf_global_config\.image_scales_ind\[0\]: 4 is out of range"),
    ("typo", "delf_local_config { use_pcaa: false }",
     r"delf\.pbtxt:3:\d+: .*DelfLocalFeatureConfig.*use_pcaa"),
  )  # fmt: skip
  def test_one_line_errors_name_file_and_field(self, extra, pattern):
    path = self._write('model_path: "m"\nimage_scales: 1.0\n' + extra + "\n")
    for load in (config_io.load_delf_config, config_io.load_any_config):
      with self.assertRaisesRegex(ValueError, pattern) as cm:
        load(path)
      self.assertNotIn("\n", str(cm.exception))

  def test_any_config_takes_dolg_configs(self):
    path = self._write('model_path: "m"\nimage_scales: 1.0\nglobal_config { use_pca: false }\n')
    config = config_io.load_any_config(path)
    self.assertFalse(config.global_config.pca_per_scale)
    self.assertEqual(config.global_descriptor_suffix, ".dolg_global")
    self.assertEqual(config, config_io.load_dolg_config(path))

  def test_neither_kind_is_one_useful_line(self):
    path = self._write('model_path: "m"\nmodle_path: "x"\n', "config.pbtxt")
    with self.assertRaisesRegex(ValueError, r'config\.pbtxt:2:1: .*DolgConfig.*"modle_path"') as cm:
      config_io.load_any_config(path)
    self.assertNotIn("\n", str(cm.exception))
    with self.assertRaisesRegex(ValueError, r"delf\.pbtxt: not a UTF-8 text file"):
      config_io.load_any_config(self.create_tempfile("delf.pbtxt", content=b"\xff\xfe").full_path)


def _delf_global(per_scale, mean, projection, dim, variances=None):
  """DELF's rule: per scale L2, PCA (+ whitening), L2; then sum over scales and L2."""
  out = []
  for x in np.asarray(per_scale, np.float64):
    x = x / np.linalg.norm(x)
    y = projection[:dim] @ (x - mean)
    if variances is not None:
      y = y / np.sqrt(variances[:dim])
    out.append(y / np.linalg.norm(y))
  total = np.sum(out, axis=0)
  return total / np.linalg.norm(total)


class _Pca:
  def __init__(self, mean, projection, dim, variances):
    self.mean, self.projection, self.pca_dim, self.variances = mean, projection, dim, variances

  def __call__(self, x):
    return postprocess.apply_pca(x, self.mean, self.projection, self.pca_dim, self.variances)


class PcaPerScaleTest(tf.test.TestCase, parameterized.TestCase):
  def _global(self, pca, per_scale):
    global_config = dolg_config_pb2.DolgConfig.GlobalConfig(
      pca_per_scale=per_scale,
      scale_pooling=dolg_config_pb2.DolgConfig.GlobalConfig.AVERAGE,
      gem_p=3.0,
    )
    return postprocess.GlobalPostprocess(global_config, pca)

  @parameterized.named_parameters(("plain", False), ("whitening", True))
  def test_matches_delfs_rule(self, whitening):
    rng = np.random.default_rng(3)
    per_scale = rng.normal(size=[3, 16]).astype(np.float32)
    mean = rng.normal(size=[16]) * 0.1
    projection = np.linalg.qr(rng.normal(size=[16, 16]))[0].T
    variances = np.sort(rng.uniform(0.5, 2.0, size=[16]))[::-1] if whitening else None
    pca = _Pca(mean, projection, 8, variances)
    got = self._global(pca, True)(per_scale)
    want = _delf_global(per_scale, mean, projection, 8, variances)
    self.assertEqual(got.shape, (8,))
    self.assertAllClose(got, want, atol=1e-5)
    # The default order (PCA after pooling) differs.
    after = self._global(pca, False)(per_scale)
    self.assertGreater(np.abs(after - want).max(), 1e-3)

  def test_without_pca_it_is_the_average(self):
    per_scale = np.random.default_rng(4).normal(size=[3, 10]).astype(np.float32)
    self.assertAllClose(
      self._global(None, True)(per_scale),
      postprocess.pool_scales(per_scale),
    )

  def test_default_is_off(self):
    self.assertFalse(dolg_config_pb2.DolgConfig.GlobalConfig().pca_per_scale)
    self.assertTrue(
      text_format.Parse(
        "pca_per_scale: true", dolg_config_pb2.DolgConfig.GlobalConfig()
      ).pca_per_scale
    )


if __name__ == "__main__":
  tf.test.main()
