"""Tests for dolg_tf.model.local_branch."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.keras_api import keras
from dolg_tf.model import local_branch


class SpatialAttentionTest(tf.test.TestCase):
  def test_output_is_attention_times_unit_vectors_normalised_before_relu(self):
    layer = local_branch.SpatialAttention2d(channels=16)
    x = tf.random.normal([2, 5, 6, 8], seed=4)
    f_l, attention = layer(x, training=False)
    self.assertEqual(f_l.shape, (2, 5, 6, 16))
    self.assertEqual(attention.shape, (2, 5, 6, 1))
    self.assertTrue(np.all(attention.numpy() > 0))  # softplus
    unit = f_l / attention
    self.assertAllClose(tf.norm(unit, axis=-1), tf.ones([2, 5, 6]), atol=1e-5)
    # Normalised before the ReLU: negative components survive.
    self.assertLess(float(tf.reduce_min(unit)), 0.0)
    # Reference computation from the layer's own weights.
    hidden = layer.bn(layer.conv1(x), training=False)
    reference_unit = hidden / tf.norm(hidden, axis=-1, keepdims=True)
    reference_attention = tf.math.softplus(layer.conv2(tf.nn.relu(hidden)))
    self.assertAllClose(f_l, reference_attention * reference_unit, atol=1e-5)

  def test_float32_under_mixed_precision(self):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
      layer = local_branch.SpatialAttention2d(channels=16)
      f_l, attention = layer(tf.random.normal([1, 4, 4, 8]), training=False)
    finally:
      keras.mixed_precision.set_global_policy("float32")
    self.assertEqual(f_l.dtype, tf.float32)
    self.assertEqual(attention.dtype, tf.float32)


class MultiAtrousTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(((6, 12, 18),), ((3, 6, 9),))
  def test_structure_and_shape(self, dilations):
    layer = local_branch.MultiAtrous(dilations, branch_channels=4, output_channels=10)
    y = layer(tf.random.normal([2, 7, 9, 3]))
    self.assertEqual(y.shape, (2, 7, 9, 10))
    self.assertTrue(np.all(y.numpy() >= 0))
    rates = [b.dilation_rate for b in layer.branches]
    self.assertEqual(rates, [(1, 1)] + [(d, d) for d in dilations])
    # Concatenation of image-pool + 1x1 + one branch per dilation.
    self.assertEqual(layer.fuse.kernel.shape, (1, 1, 4 * (2 + len(dilations)), 10))

  def test_image_pool_branch_is_constant_over_space(self):
    layer = local_branch.MultiAtrous((2,), branch_channels=3, output_channels=5)
    x = tf.random.normal([1, 6, 5, 4])
    layer(x)
    pooled = tf.nn.relu(layer.image_pool_conv(tf.reduce_mean(x, axis=[1, 2], keepdims=True)))
    branch_outputs = [tf.broadcast_to(pooled, [1, 6, 5, 3])] + [b(x) for b in layer.branches]
    expected = tf.nn.relu(layer.fuse(tf.concat(branch_outputs, -1)))
    self.assertAllClose(layer(x), expected, atol=1e-5)

  def test_dilated_branch_sees_pixels_dilation_away(self):
    layer = local_branch.MultiAtrous((3,), branch_channels=2, output_channels=2)
    x = np.zeros([1, 9, 9, 1], np.float32)
    layer(x)
    x[0, 4 + 3, 4, 0] = 1.0  # three rows below the centre
    response = layer.branches[1](x) - layer.branches[1](np.zeros_like(x))
    self.assertGreater(float(tf.reduce_max(tf.abs(response[0, 4, 4]))), 0.0)
    self.assertAllClose(response[0, 5, 4], tf.zeros([2]))  # not one of its taps

  def test_get_config_round_trip(self):
    layer = local_branch.MultiAtrous((3, 6, 9), branch_channels=8, output_channels=16)
    clone = local_branch.MultiAtrous.from_config(layer.get_config())
    self.assertEqual(clone.dilations, (3, 6, 9))
    self.assertEqual(clone.output_channels, 16)


if __name__ == "__main__":
  tf.test.main()
