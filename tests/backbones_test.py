"""Tests for dolg_tf.model.backbones."""

import functools

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, bottlenecks, foldable_batch_norm

# torchvision resnet{50,101,152} parameters without the fc classifier (pycls
# counts the same); keras.applications ResNet{50,101,152}(include_top=False)
# count_params(), which includes the BatchNorm moving statistics.
TORCHVISION_PARAMS = {50: 23_508_032, 101: 42_500_160, 152: 58_143_808}
KERAS_APPLICATIONS_PARAMS = {50: 23_587_712, 101: 42_658_176, 152: 58_370_944}


def _count(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


# The R50 keras layout with keras.applications' BatchNorm settings.
_KERAS_BN = dict(bn_momentum=0.99, bn_epsilon=1.001e-5)


def _fresh(depth, layout, **kwargs):
  backbone = backbones.ResNetBackbone(depth, layout, **kwargs)
  backbone(tf.zeros([1, 32, 32, 3]))
  return backbone


@functools.cache
def _shared_r50(layout):
  """A built R50 shared by the tests that only read it (creating its weights takes ~1 s)."""
  return _fresh(50, layout, **(_KERAS_BN if layout == "keras" else {}))


def _built(depth, layout, **kwargs):
  if depth == 50 and kwargs == (_KERAS_BN if layout == "keras" else {}):
    return _shared_r50(layout)
  return _fresh(depth, layout, **kwargs)


class ResNetBackboneTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(50, 101, 152)
  def test_pycls_parameter_count_matches_torchvision(self, depth):
    backbone = _built(depth, "pycls")
    self.assertEqual(_count(backbone.trainable_variables), TORCHVISION_PARAMS[depth])

  @parameterized.parameters(50, 101, 152)
  def test_keras_parameter_count_matches_keras_applications(self, depth):
    backbone = _built(depth, "keras", **_KERAS_BN)
    self.assertEqual(_count(backbone.variables), KERAS_APPLICATIONS_PARAMS[depth])

  def test_keras_layout_uses_keras_applications_layer_names(self):
    backbone = _built(50, "keras", **_KERAS_BN)  # names do not depend on the BatchNorm settings
    # Leaf layer name / weight name, as keras.applications' .h5 files store them.
    names = {"/".join(v.name.split("/")[-2:]) for v in backbone.variables}
    self.assertIn("conv1_conv/kernel:0", names)
    self.assertIn("conv2_block1_0_conv/kernel:0", names)
    self.assertIn("conv5_block3_3_bn/moving_variance:0", names)

  @parameterized.parameters(
    ("pycls", 64, 64, (4, 4), (2, 2)),
    ("pycls", 97, 130, (7, 9), (4, 5)),
    ("keras", 64, 64, (4, 4), (2, 2)),
    ("keras", 97, 130, (7, 9), (4, 5)),
  )
  def test_feature_map_shapes_for_odd_and_even_inputs(self, layout, height, width, f3_hw, f4_hw):
    backbone = _built(50, layout, **(_KERAS_BN if layout == "keras" else {}))
    f3, f4 = backbone(tf.random.uniform([2, height, width, 3]), training=False)
    self.assertEqual(f3.shape, (2, *f3_hw, 1024))
    self.assertEqual(f4.shape, (2, *f4_hw, 2048))

  def test_block3_strides_puts_both_maps_at_stride_32(self):
    backbone = backbones.ResNetBackbone(50, "pycls", block3_strides=True)
    f3, f4 = backbone(tf.random.uniform([1, 128, 96, 3]), training=False)
    self.assertEqual(f3.shape, (1, 4, 3, 1024))
    self.assertEqual(f4.shape, (1, 4, 3, 2048))
    self.assertEqual(_count(backbone.trainable_variables), TORCHVISION_PARAMS[50])

  def test_pycls_stem_pads_symmetrically_like_pytorch(self):
    backbone = _built(50, "pycls")
    images = tf.random.normal([1, 64, 64, 3], seed=1)
    backbone(images, training=False)
    ours = backbone.stem_conv(backbone.stem_pad(images))
    kernel = backbone.stem_conv.kernel
    # PyTorch Conv2d(7, stride=2, padding=3): 3 zeros on every side.
    symmetric = tf.nn.conv2d(tf.pad(images, [[0, 0], [3, 3], [3, 3], [0, 0]]), kernel, 2, "VALID")
    # TF 'SAME' pads (2, 3) for this case: a different result.
    same = tf.nn.conv2d(images, kernel, 2, "SAME")
    self.assertAllClose(ours, symmetric, atol=1e-5)
    self.assertGreater(float(tf.reduce_max(tf.abs(same - symmetric))), 1e-3)

  def test_pycls_strided_bottleneck_pads_symmetrically(self):
    block = bottlenecks.PyclsBottleneck(8, 32, 2, True, 0.9, 1e-5)
    x = tf.random.normal([1, 8, 8, 16], seed=2)
    block(x, training=False)
    hidden = tf.nn.relu(block.a_bn(block.a(x), training=False))
    ours = block.b(block.b_pad(hidden))
    reference = tf.nn.conv2d(
      tf.pad(hidden, [[0, 0], [1, 1], [1, 1], [0, 0]]), block.b.kernel, 2, "VALID"
    )
    self.assertAllClose(ours, reference, atol=1e-5)

  def test_batchnorm_settings_reach_every_layer(self):
    backbone = backbones.ResNetBackbone(50, "pycls", bn_momentum=0.8, bn_epsilon=1e-3)
    backbone(tf.zeros([1, 32, 32, 3]))
    bns = [
      layer for layer in _all_layers(backbone) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    self.assertLen(bns, 1 + 16 * 3 + 4)
    self.assertTrue(all(b.momentum == 0.8 and b.epsilon == 1e-3 for b in bns))

  def test_rejects_unknown_depth_and_layout(self):
    with self.assertRaisesRegex(ValueError, "depth"):
      backbones.ResNetBackbone(34)
    with self.assertRaisesRegex(ValueError, "layout"):
      backbones.ResNetBackbone(50, "caffe")

  def test_get_config_round_trip(self):
    backbone = backbones.ResNetBackbone(101, "keras", block3_strides=True, bn_momentum=0.97)
    clone = backbones.ResNetBackbone.from_config(backbone.get_config())
    self.assertEqual(clone.depth, 101)
    self.assertEqual(clone.layout, "keras")
    self.assertTrue(clone.block3_strides)
    self.assertEqual(clone.bn_momentum, 0.97)


def _with_random_statistics(backbone, seed=0):
  """`backbone` with random batch-norm weights and statistics (fresh ones fold trivially)."""
  rng = np.random.default_rng(seed)
  for _, bn in backbone.conv_bn_pairs():
    c = bn.gamma.shape[0]
    bn.gamma.assign(rng.uniform(0.3, 1.0, c).astype(np.float32))
    bn.beta.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
    bn.moving_mean.assign(rng.normal(0.0, 0.2, c).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype(np.float32))
  return backbone


class FoldBatchNormsTest(tf.test.TestCase, parameterized.TestCase):
  # Every layout, with its own epsilon (pycls 1e-5 is below fused batch norm's 1.001e-5 floor).
  @parameterized.parameters(("pycls", 1e-5), ("keras", 1.001e-5), ("delf", 1e-3))
  def test_folded_backbone_computes_the_same_features(self, layout, epsilon):
    kwargs = dict(width_multiplier=0.125, bn_epsilon=epsilon)
    source = _with_random_statistics(_fresh(26, layout, **kwargs))
    if layout != "pycls":  # their convolutions have biases, which the fold moves into the shift
      rng = np.random.default_rng(1)
      for conv, _ in source.conv_bn_pairs():
        conv.bias.assign(rng.normal(0.0, 0.1, conv.bias.shape).astype(np.float32))
    folded = _fresh(26, layout, **kwargs)
    folded.set_weights(source.get_weights())
    folded.fold_batch_norms(source=source)
    images = tf.random.stateless_uniform([2, 48, 40, 3], [0, 1], 0, 255)
    for want, got in zip(source(images, training=False), folded(images, training=False)):
      self.assertAllClose(got, want, atol=1e-4, rtol=1e-4)
    self.assertTrue(all(bn.folded for _, bn in folded.conv_bn_pairs()))
    self.assertFalse(any(bn.folded for _, bn in source.conv_bn_pairs()))
    with self.assertRaisesRegex(ValueError, "inference only"):
      folded(images, training=True)

  def test_every_batch_norm_has_its_convolution(self):
    backbone = _built(50, "pycls")
    pairs = backbone.conv_bn_pairs()
    bns = [
      layer
      for layer in _all_layers(backbone)
      if isinstance(layer, foldable_batch_norm.FoldableBatchNorm)
    ]
    self.assertCountEqual([id(bn) for _, bn in pairs], [id(bn) for bn in bns])
    for conv, bn in pairs:
      self.assertEqual(conv.filters, bn.gamma.shape[0])

  def test_folded_flag_survives_get_config(self):
    bn = foldable_batch_norm.FoldableBatchNorm(epsilon=1e-5, folded=True)
    self.assertTrue(foldable_batch_norm.FoldableBatchNorm.from_config(bn.get_config()).folded)


# DELF's ResNet50: Keras-default BatchNorm.
_DELF_BN = dict(bn_momentum=0.99, bn_epsilon=1e-3)


class DelfLayoutTest(tf.test.TestCase, parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.backbone = _fresh(50, "delf", block3_strides=True, **_DELF_BN)

  @parameterized.parameters(
    # DELF: 'same' 7x7/2 stem, valid 3x3/2 max-pool, stage 3 subsampled by a 1x1/2 max-pool.
    (321, 321, (10, 10), (10, 10)),
    (224, 224, (7, 7), (7, 7)),
    (97, 131, (3, 4), (3, 4)),
  )
  def test_feature_map_shapes_like_delf(self, height, width, f3_hw, f4_hw):
    f3, f4 = self.backbone(tf.random.uniform([1, height, width, 3]), training=False)
    self.assertEqual(f3.shape, (1, *f3_hw, 1024))
    self.assertEqual(f4.shape, (1, *f4_hw, 2048))

  def test_without_block3_strides_stage_4_keeps_its_stride(self):
    backbone = _fresh(26, "delf", width_multiplier=0.125, **_DELF_BN)
    f3, f4 = backbone(tf.random.uniform([1, 321, 321, 3]), training=False)
    self.assertEqual(f3.shape[1:3], (20, 20))
    self.assertEqual(f4.shape[1:3], (10, 10))

  def test_parameters_and_layer_names_match_the_keras_layout(self):
    # Same shapes as keras.applications' ResNet50, and its layer names (so its .h5 fits).
    self.assertEqual(_count(self.backbone.variables), KERAS_APPLICATIONS_PARAMS[50])
    keras = _built(50, "keras", **_KERAS_BN)
    delf_names = sorted("/".join(v.name.split("/")[-2:]) for v in self.backbone.variables)
    keras_names = sorted("/".join(v.name.split("/")[-2:]) for v in keras.variables)
    self.assertEqual(delf_names, keras_names)

  def test_stem_conv_pads_same_and_pool_does_not_pad(self):
    images = tf.random.normal([1, 65, 64, 3], seed=3)
    conv = self.backbone.stem_conv
    self.assertIsNone(self.backbone.stem_pad)
    self.assertIsNone(self.backbone.pool_pad)
    self.assertAllClose(
      conv(images), tf.nn.conv2d(images, conv.kernel, 2, "SAME") + conv.bias, atol=1e-4
    )
    self.assertEqual(self.backbone.pool.padding, "valid")
    self.assertIsNotNone(conv.bias)

  def test_stride_on_the_first_1x1_and_projection_on_first_blocks(self):
    stage_3 = self.backbone.stages[1]
    self.assertEqual(stage_3[0].conv2a.strides, (2, 2))
    self.assertEqual(stage_3[0].conv2b.strides, (1, 1))
    self.assertEqual(stage_3[0].conv_shortcut.strides, (2, 2))
    self.assertTrue(all(stage[0].use_projection for stage in self.backbone.stages))
    self.assertFalse(any(b.use_projection for stage in self.backbone.stages for b in stage[1:]))
    self.assertEqual(self.backbone.stages[3][0].conv2a.strides, (1, 1))  # block3_strides

  def test_batchnorm_is_keras_default(self):
    bns = [
      layer
      for layer in _all_layers(self.backbone)
      if isinstance(layer, keras.layers.BatchNormalization)
    ]
    self.assertLen(bns, 1 + 16 * 3 + 4)
    self.assertTrue(all(b.momentum == 0.99 and b.epsilon == 1e-3 for b in bns))
    config = config_lib.ModelConfig(backbone_layout="delf")
    self.assertEqual((config.resolved_bn_epsilon, config.resolved_bn_momentum), (1e-3, 0.99))

  def test_delf_layer_names(self):
    layers = self.backbone.delf_layers()
    self.assertLen(layers, 2 + 16 * 6 + 4 * 2)
    self.assertIs(layers["conv1"], self.backbone.stem_conv)
    self.assertIs(layers["l4f/bn2c"], self.backbone.stages[2][5].bn2c)
    self.assertIs(layers["l5a/conv_shortcut"], self.backbone.stages[3][0].conv_shortcut)
    self.assertNotIn("l5b/conv_shortcut", layers)

  def test_receptive_field_is_delfs(self):
    # DELF's export_model_utils: rf 291, stride 16 * stride_factor, padding 145.
    self.assertEqual(backbones.stage3_receptive_field(50, "delf", True), (291, 32, 145))
    self.assertEqual(backbones.stage3_receptive_field(50, "delf", False), (291, 16, 145))
    self.assertEqual(backbones.stage3_receptive_field(101, "delf", False), (835, 16, 417))

  def test_tiny_inputs_do_not_crash(self):
    # DELF's unpadded max-pool is undefined under 5 px (TF errors or dies with SIGFPE).
    for size in (1, 2, 4):
      f3, f4 = self.backbone(tf.ones([1, size, size + 1, 3]), training=False)
      self.assertEqual(f3.shape[1:3], (1, 1))
      self.assertEqual(f4.shape[1:3], (1, 1))
    traced = tf.function(lambda x: self.backbone(x, training=False)[1])
    concrete = traced.get_concrete_function(tf.TensorSpec([1, None, None, 3]))
    self.assertEqual(concrete(tf.ones([1, 2, 2, 3])).shape[1:3], (1, 1))
    self.assertEqual(concrete(tf.ones([1, 97, 131, 3])).shape[1:3], (3, 4))

  def test_get_config_round_trip(self):
    clone = backbones.ResNetBackbone.from_config(self.backbone.get_config())
    self.assertEqual((clone.layout, clone.block3_strides, clone.bn_epsilon), ("delf", True, 1e-3))


def _all_layers(layer):
  return list(layer._flatten_layers(include_self=False, recursive=True))


if __name__ == "__main__":
  tf.test.main()
