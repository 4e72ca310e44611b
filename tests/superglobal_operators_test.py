"""Tests for SuperGlobal's global-descriptor operators: GeM+, Regional-GeM, Scale-GeM, ReLU-up."""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.extraction import postprocess
from dolg_tf.io import config_io, savedmodel_contract
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, builder, pooling, superglobal
from tests import testutil

ScalePooling = config_io.DolgConfig.GlobalConfig
SUPERGLOBAL_EXPORT = dataclasses.replace(
  testutil.SMALL_EXPORT_CONFIG, superglobal_gem_p=4.6, regional_gem_weight=0.5
)
OPTIONS = superglobal.TestTimeOptions(gem_plus_p=4.6, regional_gem_weight=0.5)


def _image(seed, height=64, width=48):
  return np.random.default_rng(seed).integers(0, 256, [height, width, 3], dtype=np.uint8)


def _extractor(folder, export_dir, global_config="", loaded=None):
  path = os.path.join(folder, "config.pbtxt")
  with open(path, "w") as f:
    f.write(f'model_path: "{export_dir}"\nimage_scales: 1.0\nmax_image_size: 80\n')
    f.write(f"global_config {{ {global_config} }}\n")
  config = config_io.load_dolg_config(path)
  return extractor_lib.Extractor(config, path, saved_model=loaded)


class OperatorTest(tf.test.TestCase):
  def test_regional_gem_of_a_3x3_map(self):
    x = tf.reshape(tf.range(1.0, 10.0), [1, 3, 3, 1])  # [[1 2 3] [4 5 6] [7 8 9]]
    pooled = superglobal.regional_gem(x, p=2.0, size=3)[0, :, :, 0]
    # Centre: the whole map, sqrt((1 + 4 + ... + 81) / 9) = sqrt(285 / 9).
    self.assertAllClose(pooled[1, 1], np.sqrt(285 / 9))
    # Corner (0, 0): reflect padding mirrors row 1 and column 1 across the border, so the
    # window is rows (1, 0, 1) x columns (1, 0, 1): 5 4 5 / 2 1 2 / 5 4 5, squares sum 141.
    self.assertAllClose(pooled[0, 0], np.sqrt(141 / 9))

  def test_regional_gem_weight_blends_with_the_map(self):
    x = tf.reshape(tf.range(1.0, 10.0), [1, 3, 3, 1])
    options = superglobal.TestTimeOptions(
      regional_gem_weight=0.5, regional_gem_p=2.0, regional_gem_size=3
    )
    blended = superglobal.apply_regional_gem(x, options)[0, 1, 1, 0]
    self.assertAllClose(blended, 0.5 * 5.0 + 0.5 * np.sqrt(285 / 9))
    off = superglobal.TestTimeOptions(regional_gem_weight=0.0)
    self.assertAllEqual(superglobal.apply_regional_gem(x, off), x)

  def test_regional_gem_of_a_map_too_small_to_reflect(self):
    # 2x2 with a 5x5 window (padding 2) cannot be reflect-padded: the in-map part is pooled.
    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
    pooled = superglobal.regional_gem(x, p=2.0, size=5)
    self.assertAllClose(pooled[0, :, :, 0], np.full([2, 2], np.sqrt(30 / 4)))

  def test_regional_gem_matches_the_reference_formula(self):
    # SuperGlobal: 0.5 * LPPool(pad(x / 25^(1/p)), 5) + 0.5 * x, LPPool = (sum x^p)^(1/p).
    x = np.random.default_rng(0).uniform(0, 2, [1, 6, 7, 3]).astype(np.float32)
    padded = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect") / 25 ** (1 / 2.5)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(1, 2))
    reference = 0.5 * np.sum(windows**2.5, axis=(-2, -1)) ** (1 / 2.5) + 0.5 * x
    options = superglobal.TestTimeOptions(regional_gem_weight=0.5)
    self.assertAllClose(superglobal.apply_regional_gem(x, options), reference, rtol=1e-5)

  def test_gem_plus_replaces_the_trained_exponent(self):
    layer = pooling.GeMPooling(p=3.0)
    x = tf.constant([1.0, 3.0])[None, None, :, None]  # a 1x2 map
    self.assertAllClose(layer(x, p=2.0)[0, 0], np.sqrt((1 + 9) / 2))
    self.assertAllClose(layer(x, p=0.0)[0, 0], ((1 + 27) / 2) ** (1 / 3))
    self.assertAllClose(layer(x)[0, 0], ((1 + 27) / 2) ** (1 / 3))

  def test_scale_max_and_scale_gem(self):
    per_scale = np.array([[3.0, 4.0], [0.0, 2.0]])  # normalised: [0.6, 0.8], [0, 1]
    pooled = postprocess.pool_scales(per_scale, ScalePooling.MAX)
    self.assertAllClose(pooled, np.array([0.6, 1.0]) / np.sqrt(1.36))
    # p = 2, gamma = min = 0: sqrt(mean of squares) = sqrt(0.18), sqrt(0.82).
    pooled = postprocess.pool_scales(per_scale, ScalePooling.SCALE_GEM, p=2.0)
    expected = np.sqrt([0.18, 0.82])
    self.assertAllClose(pooled, expected / np.linalg.norm(expected))

  def test_scale_gem_shifts_by_the_smallest_component(self):
    per_scale = np.array([[-0.6, 0.8], [0.0, 1.0]])
    pooled = postprocess.pool_scales(per_scale, ScalePooling.SCALE_GEM, p=1.0)
    # gamma = -0.6; p = 1 is the plain mean, unchanged by the shift: (-0.3, 0.9).
    self.assertAllClose(pooled, np.array([-0.3, 0.9]) / np.linalg.norm([-0.3, 0.9]))


class ReluUpTest(tf.test.TestCase):
  def test_floors_stages_1_to_3_only(self):
    keras.utils.set_random_seed(0)
    plain = backbones.ResNetBackbone(26, width_multiplier=0.25)
    lifted = backbones.ResNetBackbone(26, width_multiplier=0.25, relu_up=0.014)
    images = tf.random.normal([1, 64, 64, 3])
    plain(images)
    lifted(images)
    lifted.set_weights(plain.get_weights())
    f3, f4 = lifted(images, training=False)
    self.assertAllGreaterEqual(f3, 0.014)
    self.assertAllGreaterEqual(f4, 0.0)
    self.assertLess(float(tf.reduce_min(f4)), 0.014)  # stage 4 keeps ReLU
    self.assertNotAllClose(f3, plain(images, training=False)[0])
    self.assertEqual(lifted.stages[0][0].inner_floor, 0.014)
    self.assertEqual(lifted.stages[1][0].inner_floor, 0.0)
    self.assertEqual(lifted.stages[2][-1].output_floor, 0.014)
    self.assertEqual(lifted.stages[3][0].output_floor, 0.0)

  def test_the_config_round_trips_and_is_validated(self):
    config = dataclasses.replace(testutil.TINY_DOLG, relu_up=0.014)
    self.assertEqual(config_lib.ModelConfig.from_dict(config.as_dict()).relu_up, 0.014)
    model = builder.build_model(config, image_size=64)
    self.assertEqual(model.backbone.relu_up, 0.014)
    with self.assertRaisesRegex(config_lib.ConfigError, "model.relu_up"):
      dataclasses.replace(testutil.TINY_DOLG, relu_up=-1.0).validate()


class ExportAndExtractionTest(parameterized.TestCase, tf.test.TestCase):
  @parameterized.parameters("dolg", "delg")
  def test_export_serves_the_model_with_its_options(self, name):
    loaded = testutil.tiny_loaded(name, export_config=SUPERGLOBAL_EXPORT)
    self.assertAllClose(getattr(loaded, savedmodel_contract.GEM_PLUS_P), 4.6)
    self.assertAllClose(getattr(loaded, savedmodel_contract.REGIONAL_GEM_WEIGHT), 0.5)
    image = _image(1)
    signature = loaded.signatures[savedmodel_contract.GLOBAL_SIGNATURES[0 if name == "delg" else 1]]
    served = signature(
      input_image=tf.constant(image),
      input_scales=tf.constant([1.0]),
      input_global_scales_ind=tf.constant([0]),
    )[savedmodel_contract.GLOBAL_DESCRIPTOR]
    model = testutil.tiny_model(name)
    pixels = tf.cast(image[None], tf.float32)
    expected = model(pixels, training=False, test_time=OPTIONS)
    self.assertAllClose(served, expected[0], atol=1e-6)
    self.assertNotAllClose(served, model(pixels, training=False)[0], atol=1e-4)

  def test_extraction_config_switches_the_options(self):
    export_dir = testutil.tiny_export("dolg", export_config=testutil.SMALL_EXPORT_CONFIG)
    loaded = tf.saved_model.load(export_dir)
    folder = self.create_tempdir().full_path
    image = _image(2)
    model = testutil.tiny_model("dolg")
    pixels = tf.cast(image[None], tf.float32)
    switched = _extractor(folder, export_dir, "gem_plus_p: 4.6 regional_gem_weight: 0.5", loaded)
    expected = model(pixels, training=False, test_time=OPTIONS)[0]
    self.assertAllClose(switched.extract(image), expected, atol=1e-6)
    # A second extractor on the same loaded SavedModel gets the export's own values back.
    default = _extractor(folder, export_dir, "", loaded)
    self.assertAllClose(default.extract(image), model(pixels, training=False)[0], atol=1e-6)

  def test_frozen_export_refuses_the_options(self):
    frozen = dataclasses.replace(testutil.SMALL_EXPORT_CONFIG, freeze_weights=True)
    export_dir = testutil.tiny_export("dolg", export_config=frozen)
    loaded = testutil.tiny_loaded("dolg", export_config=frozen)
    self.assertFalse(hasattr(loaded, savedmodel_contract.GEM_PLUS_P))
    folder = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, r"config.pbtxt: global_config.gem_plus_p: .*freeze"):
      _extractor(folder, export_dir, "gem_plus_p: 4.6", loaded)

  def test_export_scale_pooling_max(self):
    export_config = dataclasses.replace(testutil.SMALL_EXPORT_CONFIG, scale_pooling="max")
    export_dir = testutil.tiny_export("dolg", export_config=export_config)
    loaded = testutil.tiny_loaded("dolg", export_config=export_config)
    outputs = loaded.signatures[savedmodel_contract.SERVING_DEFAULT](
      input_image=tf.constant(_image(3)),
      input_scales=tf.constant([0.5, 1.0]),
      input_global_scales_ind=tf.constant([0, 1]),
    )
    per_scale = outputs[savedmodel_contract.GLOBAL_DESCRIPTORS].numpy()
    self.assertAllClose(
      outputs[savedmodel_contract.GLOBAL_DESCRIPTOR],
      postprocess.pool_scales(per_scale, ScalePooling.MAX),
      atol=1e-6,
    )
    folder = self.create_tempdir().full_path
    extractor = _extractor(folder, export_dir, "", loaded)
    self.assertEqual(extractor.config.global_config.scale_pooling, ScalePooling.MAX)
    explicit = _extractor(folder, export_dir, "scale_pooling: AVERAGE", loaded)
    self.assertEqual(explicit.config.global_config.scale_pooling, ScalePooling.AVERAGE)

  def test_bad_values_name_their_field(self):
    for field, value in (
      ("regional_gem_weight", 1.5),
      ("regional_gem_size", 4),
      ("superglobal_gem_p", -1.0),
      ("scale_pooling", "gem"),
    ):
      with self.assertRaisesRegex(config_lib.ConfigError, f"export.{field}"):
        dataclasses.replace(testutil.SMALL_EXPORT_CONFIG, **{field: value}).validate()
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "bad.pbtxt")
    with open(path, "w") as f:
      f.write('model_path: "m"\nimage_scales: 1.0\nglobal_config { regional_gem_weight: 2 }\n')
    with self.assertRaisesRegex(ValueError, "bad.pbtxt.*global_config.regional_gem_weight"):
      config_io.load_dolg_config(path)


if __name__ == "__main__":
  tf.test.main()
