"""Tests for dolg_tf.model.keras_app_backbones: EfficientNet, EfficientNetV2, ConvNeXt backbones.

The smallest network of each family (efficientnet_b0, efficientnetv2_s,
convnext_tiny) at 64 px; the larger ones differ only in widths and depths
(benchmarks/backbones_benchmark.py builds and times them all).
"""

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf import config_sections
from dolg_tf.export import serving_graph
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, base, builder, keras_app_backbones, keras_h5
from tests import testutil

SMALLEST = ("efficientnet_b0", "efficientnetv2_s", "convnext_tiny")
# backbone: (f3 channels, f4 channels, f3 receptive field). The fields by hand (one 3x3 /
# 5x5 / 7x7 conv per block, size += (k - 1) * jump): B0 3 +4 +8+8 +16+32 +16+32+32 +64+128+128
# = 339 (SE gates left out); V2-S 3 +8 +4+24 +8+48 +16+160 +288 = 559; ConvNeXt-T
# 4 +72 +4+144 +8+864 = 1096.
EXPECTED = {
  "efficientnet_b0": (112, 1280, 339),
  "efficientnetv2_s": (160, 1280, 559),
  "convnext_tiny": (384, 768, 1096),
}
SIZE = 64


def _dolg(backbone):
  return config_lib.ModelConfig(backbone=backbone, local_dim=16, embedding_dim=16, head_scale=4.0)


def _delg(backbone):
  return config_lib.delg_config(
    backbone=backbone, embedding_dim=16, delg_reduced_dim=8, delg_attention_hidden=16
  )


@functools.cache
def _model(backbone, name):
  keras.utils.set_random_seed(5)
  config = _dolg(backbone) if name == "dolg" else _delg(backbone)
  return builder.build_model(config, image_size=SIZE, num_classes=4 if name == "delg" else None)


def _pixels(height=SIZE, width=SIZE, batch=2, seed=1):
  return tf.random.stateless_uniform([batch, height, width, 3], [seed, 2], 0.0, 255.0)


def _train_step(model, config, is_delg):
  """One SGD step (margin head; DELG: + attention loss); returns (loss, variables before)."""
  head = builder.build_head(config, 4)
  images, labels = _pixels(batch=4), tf.constant([0, 1, 2, 3])
  before = [v.numpy() for v in model.trainable_variables]
  with tf.GradientTape() as tape:
    out = model(images, training=True, return_intermediates=True)
    embedding = out["global_embedding"] if is_delg else out["embedding"]
    logits = head(embedding, labels, training=True)
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, True))
    if is_delg:
      loss += tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(labels, out["attention_logits"], True)
      )
  variables = model.trainable_variables + head.trainable_variables
  gradients = tape.gradient(loss, variables)
  keras.optimizers.SGD(0.01).apply_gradients(zip(gradients, variables))
  return loss, before


class ConfigTest(tf.test.TestCase):
  def test_default_is_resnet_and_bad_names_are_one_line_errors(self):
    self.assertEqual(config_lib.ModelConfig().backbone, "resnet")
    with self.assertRaisesRegex(config_lib.ConfigError, r"model.backbone must be one of .*'") as e:
      config_lib.ModelConfig(backbone="efficientnet_b9")
    self.assertNotIn("\n", str(e.exception))
    self.assertIn("convnext_large", str(e.exception))
    with self.assertRaisesRegex(config_lib.ConfigError, "apply to backbone 'resnet' only"):
      config_lib.ModelConfig(backbone="convnext_tiny", relu_up=0.01)
    with self.assertRaisesRegex(config_lib.ConfigError, "apply to backbone 'resnet' only"):
      config_lib.ModelConfig(backbone="efficientnet_b0", backbone_width_multiplier=0.5)

  def test_every_backbone_has_a_builder_on_this_stack(self):
    self.assertEqual(tuple(keras_app_backbones.BUILDERS), config_sections.KERAS_APP_BACKBONES)
    for builder_name, _ in keras_app_backbones.BUILDERS.values():
      self.assertTrue(hasattr(keras.applications, builder_name), builder_name)

  def test_input_normalization_is_what_the_imagenet_weights_expect(self):
    pixels = tf.constant([[[[0.0, 128.0, 255.0]]]])
    # keras EfficientNet (V1) ImageNet: x / 255, - mean, / std (its Normalization + Rescaling).
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    imagenet = (np.array([0.0, 128.0, 255.0]) / 255.0 - mean) / std
    # EfficientNetV2 S/M/L: Rescaling(1 / 128, offset -1).
    v2 = np.array([0.0, 128.0, 255.0]) / 128.0 - 1.0
    for backbone, expected in (
      ("efficientnet_b3", imagenet),
      ("efficientnetv2_m", v2),
      ("convnext_base", imagenet),
    ):
      config = config_lib.ModelConfig(backbone=backbone, input_mean=(1.0,) * 3)
      layer = base.normalization.InputNormalization(*base.input_normalization(config))
      self.assertAllClose(layer(pixels)[0, 0, 0], expected, atol=1e-5, msg=backbone)


class ReceptiveFieldTest(tf.test.TestCase):
  def test_keras_resnet50_gives_delfs_field(self):
    resnet = keras.applications.ResNet50(
      include_top=False, weights=None, input_shape=(None, None, 3)
    )
    size, stride = keras_app_backbones.receptive_field(
      resnet, resnet.get_layer("conv4_block6_out").output
    )
    self.assertEqual((size, stride), backbones.stage3_receptive_field(50, "keras")[:2])
    self.assertEqual((size, stride), (291, 16))


class KerasAppBackboneTest(parameterized.TestCase, tf.test.TestCase):
  @parameterized.parameters(*SMALLEST)
  def test_strides_channels_and_imagenet_h5(self, backbone):
    f3_channels, f4_channels, field = EXPECTED[backbone]
    config = config_lib.ModelConfig(backbone=backbone)
    keras.utils.set_random_seed(7)
    ours = base.build_backbone(config)
    normalize = base.normalization.InputNormalization(*base.input_normalization(config))
    self.assertEqual(ours.output_channels, (f3_channels, f4_channels))
    self.assertEqual(ours.receptive_field(), (field, 16, (field - 1) // 2))
    f3, f4 = ours(normalize(_pixels(96, 64)), training=False)
    self.assertEqual(tuple(f3.shape), (2, 6, 4, f3_channels))
    self.assertEqual(tuple(f4.shape), (2, 3, 2, f4_channels))
    # keras.applications' own network (with its preprocessing, as keras' ImageNet files are
    # written), its weights saved by keras as `*_notop.h5`: ours loads every weight of it.
    keras.utils.set_random_seed(8)
    reference = getattr(keras.applications, keras_app_backbones.BUILDERS[backbone][0])(
      include_top=False, weights=None, input_shape=(None, None, 3)
    )
    if backbone.startswith("efficientnet_"):
      # The Normalization keras V1 adapts: the ImageNet statistics in [0, 1] units.
      norm = next(x for x in reference.layers if isinstance(x, keras.layers.Normalization))
      norm.set_weights([np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]) ** 2, 0])
    for layer in reference.layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.moving_mean.assign(np.random.normal(0, 0.1, layer.moving_mean.shape))
        layer.moving_variance.assign(np.random.uniform(0.5, 1.5, layer.moving_variance.shape))
    path = os.path.join(self.get_temp_dir(), f"{reference.name}_notop.h5")
    reference.save_weights(path)
    with_weights = [layer for layer in ours.network.layers if layer.weights]
    self.assertEqual(keras_h5.load_backbone_weights(ours, path), len(with_weights))
    # keras' own layers of the file, in order (V1's input Normalization is the model's own).
    theirs = [
      x for x in reference.layers if x.weights and not isinstance(x, keras.layers.Normalization)
    ]
    for layer, source in zip(with_weights, theirs, strict=True):
      for mine, expected in zip(layer.weights, source.weights, strict=True):
        if keras_app_backbones.is_grouped_depthwise(source) and "kernel" in expected.name:
          # ConvNeXt's grouped Conv2D [k, k, 1, C] is our DepthwiseConv2D's [k, k, C, 1].
          self.assertIsInstance(layer, keras.layers.DepthwiseConv2D)
          expected = tf.transpose(expected, (0, 1, 3, 2))
        self.assertAllEqual(mine, expected, msg=mine.name)
    if backbone.startswith("convnext"):  # every depthwise convolution is a DepthwiseConv2D
      depthwise = [x for x in ours.network.layers if isinstance(x, keras.layers.DepthwiseConv2D)]
      self.assertLen(depthwise, 18)  # ConvNeXt-T: 3 + 3 + 9 + 3 blocks
      self.assertFalse(any(map(keras_app_backbones.is_grouped_depthwise, ours.network.layers)))
    # Same features as keras' network on raw pixels (its preprocessing = our normalisation).
    pixels = _pixels(64, 64)
    expected_f4 = reference(pixels, training=False)
    self.assertAllClose(ours(normalize(pixels), training=False)[1], expected_f4, atol=2e-4)

  def test_h5_errors_name_the_file_and_layer(self):
    ours = base.build_backbone(config_lib.ModelConfig(backbone="efficientnet_b0"))
    other = keras.Sequential([keras.layers.Dense(2, name="dense")])
    other.build((None, 3))
    resnet_file = os.path.join(self.get_temp_dir(), "resnet.h5")
    other.save_weights(resnet_file)
    with self.assertRaisesRegex(ValueError, "resnet.h5: no weights for layer 'stem_conv'"):
      keras_h5.load_backbone_weights(ours, resnet_file)

  # One DOLG and one DELG (EfficientNetV2's blocks are EfficientNet's: the benchmark runs it).
  @parameterized.parameters(("efficientnet_b0", "dolg"), ("convnext_tiny", "delg"))
  def test_train_step(self, backbone, name):
    model = _model(backbone, name)
    config = model.model_config
    loss, before = _train_step(model, config, name == "delg")
    self.assertTrue(np.isfinite(loss.numpy()))
    after = model.trainable_variables
    changed = {v.name.split("/")[0] for v, b in zip(after, before) if not np.array_equal(v, b)}
    # The backbone's first convolution learns (DELG: through the global loss).
    first = "stem_conv" if backbone.startswith("efficientnet") else "convnext_tiny_stem_conv"
    self.assertIn(first, changed)
    f3 = model(_pixels(), training=False, return_intermediates=True)["f3"]
    self.assertEqual(f3.shape[1], SIZE // (32 if name == "delg" else 16))

  @parameterized.parameters(("efficientnet_b0", "dolg"), ("convnext_tiny", "delg"))
  def test_serving_twins_fold_nothing_and_bf16_runs(self, backbone, name):
    # The SavedModel export and extraction of these backbones take minutes here:
    # `benchmarks/backbones_benchmark.py --check_export` runs them.
    model = _model(backbone, name)
    config = model.model_config
    # Folding is a no-op for these backbones: a float32 export serves the model itself.
    self.assertIs(serving_graph.serving_model(model, config, testutil.SMALL_EXPORT_CONFIG), model)
    weights = [w.numpy() for w in model.backbone.weights]
    model.backbone.fold_batch_norms()
    for w, v in zip(weights, model.backbone.weights, strict=True):
      self.assertAllEqual(w, v)
    bf16 = dataclasses.replace(testutil.SMALL_EXPORT_CONFIG, precision="bfloat16")
    twin = serving_graph.serving_model(model, config, bf16)
    self.assertIsNot(twin, model)
    images = _pixels()
    f4 = twin(images, training=False, return_intermediates=True)["f4"]
    self.assertEqual(twin.backbone.network.layers[-1].compute_dtype, "bfloat16")
    self.assertEqual(f4.dtype, tf.float32)
    expected = model(images, training=False)
    cosines = tf.reduce_sum(twin(images, training=False) * expected, axis=-1)
    self.assertAllGreater(cosines, 0.9)


if __name__ == "__main__":
  tf.test.main()
