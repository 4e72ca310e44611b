"""Tests for dolg_tf.model.backbones."""

import functools

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.model import backbones

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
    block = backbones.PyclsBottleneck(8, 32, 2, True, 0.9, 1e-5)
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
      layer
      for layer in _all_layers(backbone)
      if isinstance(layer, tf.keras.layers.BatchNormalization)
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


def _all_layers(layer):
  return list(layer._flatten_layers(include_self=False, recursive=True))


if __name__ == "__main__":
  tf.test.main()
