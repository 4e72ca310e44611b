"""Tests for dolg_tf.io.config_io and the shipped extraction configs."""

import os
import re

import tensorflow as tf
from absl.testing import parameterized
from google.protobuf import text_format

from dolg_tf.io import config_io
from dolg_tf.protos import dolg_config_pb2

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_VALID = """
model_path: "runs/x/export/1"
image_scales: 0.5
image_scales: 1.0
max_image_size: 1024
use_local_features: true
global_config { image_scales_ind: 1 }
"""


def _config_text(extra, clear=()):
  """_VALID with the fields in `clear` removed and `extra` merged over it (last value wins)."""
  config = text_format.Parse(_VALID, dolg_config_pb2.DolgConfig())
  for name in clear:
    config.ClearField(name)
  text_format.Merge(extra, config)
  return text_format.MessageToString(config)


class ConfigIoTest(tf.test.TestCase, parameterized.TestCase):
  def _write(self, text, name="config.pbtxt"):
    return self.create_tempfile(name, content=text).full_path

  def test_shipped_dolg_config(self):
    path = os.path.join(_REPO, "protos", "dolg.pbtxt")
    # The package's copy (written by the build) is the shipped file.
    with open(path) as source, open(config_io.DOLG_CONFIG_PATH) as packaged:
      self.assertEqual(source.read(), packaged.read())
    config = config_io.load_dolg_config(path)
    self.assertEqual(config.model_path, "runs/demo/export/1")
    self.assertSequenceAlmostEqual(config.image_scales, [0.7071, 1.0, 1.4142], places=6)
    self.assertEqual(config.max_image_size, 1024)
    self.assertEqual(config.min_image_size, -1)
    self.assertTrue(config.use_global_features)
    self.assertFalse(config.use_local_features)
    self.assertEqual(
      config.global_config.scale_pooling, dolg_config_pb2.DolgConfig.GlobalConfig.AVERAGE
    )
    self.assertFalse(config.global_config.use_pca)
    self.assertEqual(config.global_descriptor_suffix, ".dolg_global")

  def test_shipped_delg_config(self):
    config = config_io.load_dolg_config(os.path.join(_REPO, "protos", "delg.pbtxt"))
    self.assertEqual(config.model_path, "runs/delg/export/1")
    self.assertLen(config.image_scales, 7)
    self.assertAlmostEqual(config.image_scales[0], 0.25)
    self.assertAlmostEqual(config.image_scales[-1], 2.0)
    self.assertTrue(config.use_global_features)
    self.assertTrue(config.use_local_features)
    global_scales = [config.image_scales[i] for i in config.global_config.image_scales_ind]
    self.assertSequenceAlmostEqual(global_scales, [0.7071, 1.0, 1.4142], places=4)
    self.assertEqual(config.local_config.max_feature_num, 1000)
    self.assertFalse(config.local_config.use_pca)
    self.assertEqual(config.local_descriptor_suffix, ".delg_local")
    self.assertEqual(config.global_descriptor_suffix, ".delg_global")

  def test_defaults(self):
    config = dolg_config_pb2.DolgConfig()
    self.assertTrue(config.use_global_features)
    self.assertFalse(config.use_local_features)
    self.assertEqual(config.max_image_size, -1)
    self.assertEqual(config.min_image_size, -1)
    self.assertEqual(config.local_config.max_feature_num, 1000)
    self.assertEqual(config.global_config.gem_p, 3.0)
    self.assertEqual(config.global_descriptor_suffix, ".dolg_global")
    self.assertEqual(config.local_descriptor_suffix, ".delg_local")
    self.assertEqual(
      config_io.load_dolg_config(self._write(_VALID)).global_config.image_scales_ind, [1]
    )

  def test_typo_names_file_line_and_field(self):
    path = self._write('image_scales: 1.0\nmodle_path: "x"\n')
    with self.assertRaisesRegex(ValueError, re.escape(path) + r":2:1: .*\"modle_path\"") as cm:
      config_io.load_dolg_config(path)
    self.assertNotIn("\n", str(cm.exception))

  def test_bad_value_names_file_and_line(self):
    path = self._write("image_scales: 1.0\nglobal_config {\n  scale_pooling: MEDIAN\n}\n")
    with self.assertRaisesRegex(ValueError, re.escape(path) + r":3:\d+: .*MEDIAN"):
      config_io.load_dolg_config(path)

  def test_missing_file(self):
    path = os.path.join(self.create_tempdir().full_path, "nope.pbtxt")
    with self.assertRaisesRegex(FileNotFoundError, re.escape(path)):
      config_io.load_dolg_config(path)

  @parameterized.named_parameters(
    (
      "nothing_to_extract",
      "use_global_features: false\nuse_local_features: false",
      "use_global_features, use_local_features: both false",
    ),
    ("negative_scale", "image_scales: -0.5", r"image_scales\[2\]: must be a positive"),
    ("zero_scale", "image_scales: 0", r"image_scales\[2\]: must be a positive"),
    (
      "scale_index_out_of_range",
      "global_config { image_scales_ind: 2 }",
      r"global_config.image_scales_ind\[1\]: 2 is out of range for 2",
    ),
    (
      "negative_scale_index",
      "global_config { image_scales_ind: -1 }",
      r"global_config.image_scales_ind\[1\]: -1 is out of range",
    ),
    (
      "repeated_scale_index",
      "global_config { image_scales_ind: 1 }",
      r"global_config.image_scales_ind\[1\]: 1 is repeated",
    ),
    ("zero_max_size", "max_image_size: 0", "max_image_size: must be positive or -1"),
    ("bad_min_size", "min_image_size: -2", "min_image_size: must be positive or -1"),
    ("min_above_max", "min_image_size: 2048", "min_image_size: 2048 exceeds max_image_size 1024"),
    (
      "global_pca_paths",
      "global_config { use_pca: true pca_parameters { pca_dim: 8 } }",
      r"global_config.pca_parameters.mean_path: required",
    ),
    (
      "global_pca_dim",
      'global_config { use_pca: true pca_parameters { mean_path: "m" '
      'projection_matrix_path: "p" } }',
      r"global_config.pca_parameters.pca_dim: must be",
    ),
    (
      "whitening_variances",
      'global_config { use_pca: true pca_parameters { mean_path: "m" '
      'projection_matrix_path: "p" pca_dim: 4 use_whitening: true } }',
      "global_config.pca_parameters.pca_variances_path: required",
    ),
    (
      "local_pca_paths",
      'local_config { use_pca: true pca_parameters { mean_path: "m" pca_dim: 4 } }',
      "local_config.pca_parameters.projection_matrix_path: required",
    ),
    ("gem_p", "global_config { scale_pooling: GEM gem_p: 0 }", "global_config.gem_p: must be"),
    (
      "max_feature_num",
      "local_config { max_feature_num: 0 }",
      "local_config.max_feature_num: must be positive",
    ),
    (
      "score_threshold",
      "local_config { score_threshold: nan }",
      "local_config.score_threshold: must be finite",
    ),
    ("empty_suffix", 'global_descriptor_suffix: ""', "global_descriptor_suffix: must not"),
    (
      "same_suffixes",
      'local_descriptor_suffix: ".dolg_global"',
      "local_descriptor_suffix: same as global_descriptor_suffix",
    ),
  )
  def test_validation_rule(self, extra, pattern, clear=()):
    path = self._write(_config_text(extra, clear))
    with self.assertRaisesRegex(ValueError, re.escape(path) + ": " + pattern):
      config_io.load_dolg_config(path)

  def test_valid_variants(self):
    extras = [
      "global_config { scale_pooling: GEM gem_p: 2.5 }",
      'global_config { use_pca: true pca_parameters { mean_path: "m" '
      'projection_matrix_path: "p" pca_dim: 4 use_whitening: true pca_variances_path: "v" } }',
      "min_image_size: 256",
      "max_image_size: -1\nmin_image_size: 4096",
      # Local-only configs do not look at global settings.
      "use_global_features: false\nglobal_config { image_scales_ind: 9 }",
    ]
    for extra in extras:
      config_io.load_dolg_config(self._write(_config_text(extra)))

  def test_empty_image_scales_are_left_to_the_saved_model(self):
    # The extractor checks image_scales_ind against the SavedModel's pyramid.
    config = config_io.load_dolg_config(
      self._write(_config_text("global_config { image_scales_ind: 5 }", ["image_scales"]))
    )
    self.assertEmpty(config.image_scales)
    path = self._write(_config_text("global_config { image_scales_ind: -1 }", ["image_scales"]))
    with self.assertRaisesRegex(ValueError, r"image_scales_ind\[1\]: -1 is out of range"):
      config_io.load_dolg_config(path)

  def test_all_problems_are_counted(self):
    config = dolg_config_pb2.DolgConfig(image_scales=[-1.0], max_image_size=0)
    self.assertLen(config_io.config_errors(config), 2)
    with self.assertRaisesRegex(ValueError, r"^<config>: image_scales\[0\].*1 more problem"):
      config_io.validate_dolg_config(config)

  def test_resolve_model_path(self):
    folder = self.create_tempdir().full_path
    model_dir = os.path.join(folder, "model")
    os.mkdir(model_dir)
    config = dolg_config_pb2.DolgConfig(model_path=model_dir)
    self.assertEqual(config_io.resolve_model_path(config), model_dir)

    cwd = os.getcwd()
    try:
      os.chdir(folder)
      config.model_path = "model"
      self.assertEqual(config_io.resolve_model_path(config), model_dir)
      # Not under the current directory: falls back to the repository root.
      config.model_path = "protos/dolg.pbtxt"
      self.assertEqual(
        config_io.resolve_model_path(config), os.path.join(config_io.REPO_ROOT, "protos/dolg.pbtxt")
      )
      config.model_path = "runs/not_there/export/1"
      with self.assertRaisesRegex(FileNotFoundError, r"^cfg.pbtxt: model_path: .*not_there"):
        config_io.resolve_model_path(config, "cfg.pbtxt")
      self.assertEqual(
        config_io.resolve_model_path(config, must_exist=False),
        os.path.join(folder, "runs/not_there/export/1"),
      )
    finally:
      os.chdir(cwd)
    with self.assertRaisesRegex(ValueError, "cfg.pbtxt: model_path: not set"):
      config_io.resolve_model_path(dolg_config_pb2.DolgConfig(), "cfg.pbtxt")


class AnyConfigTest(tf.test.TestCase):
  def test_shipped_configs_load_as_dolg_configs(self):
    for path in (config_io.DOLG_CONFIG_PATH, config_io.DELG_CONFIG_PATH):
      self.assertEqual(config_io.load_any_config(path), config_io.load_dolg_config(path))

  def test_delf_config_is_translated(self):
    path = self.create_tempfile(
      "delf.pbtxt",
      content='model_path: "m"\nimage_scales: 1.0\nuse_global_features: true\n'
      "use_local_features: false\ndelf_global_config { use_pca: false }\n",
    ).full_path
    config = config_io.load_any_config(path)
    self.assertTrue(config.global_config.pca_per_scale)
    self.assertEqual(config.global_descriptor_suffix, ".delg_global")


if __name__ == "__main__":
  tf.test.main()
