"""DOLG local branch: multi-atrous module and self-attention."""

import tensorflow as tf

from dolg_tf.keras_api import keras
from dolg_tf.model import initializers, normalization


class MultiAtrous(keras.layers.Layer):
  """Multi-atrous module (the official code's `ASPP`).

  Branches on the input map: an image-pool branch (global average pool ->
  1x1 conv -> ReLU -> broadcast to H x W), a 1x1 conv and one 3x3 conv per
  dilation (padding = dilation), all with bias and no BN; concatenated in the
  official order [image_pool, 1x1, d_1, d_2, ...] and fused by 1x1 conv + ReLU.
  """

  def __init__(self, dilations=(6, 12, 18), branch_channels=512, output_channels=1024, **kwargs):
    super().__init__(**kwargs)
    self.dilations = tuple(int(d) for d in dilations)
    self.branch_channels = branch_channels
    self.output_channels = output_channels
    self.image_pool_conv = keras.layers.Conv2D(
      branch_channels, 1, kernel_initializer=initializers.pytorch_default(), name="image_pool_conv"
    )
    self.branches = [
      keras.layers.Conv2D(
        branch_channels, 1, kernel_initializer=initializers.pytorch_default(), name="conv1x1"
      )
    ]
    for d in self.dilations:
      self.branches.append(
        keras.layers.Conv2D(
          branch_channels,
          3,
          padding="same",
          dilation_rate=d,
          kernel_initializer=initializers.pytorch_default(),
          name=f"conv3x3_d{d}",
        )
      )
    self.fuse = keras.layers.Conv2D(
      output_channels, 1, kernel_initializer=initializers.pytorch_default(), name="fuse"
    )

  def call(self, x):
    pooled = tf.nn.relu(self.image_pool_conv(tf.reduce_mean(x, axis=[1, 2], keepdims=True)))
    pooled = tf.broadcast_to(pooled, tf.concat([tf.shape(x)[:3], [self.branch_channels]], 0))
    outputs = [pooled] + [branch(x) for branch in self.branches]
    return tf.nn.relu(self.fuse(tf.concat(outputs, axis=-1)))

  def get_config(self):
    config = super().get_config()
    config.update(
      dilations=self.dilations,
      branch_channels=self.branch_channels,
      output_channels=self.output_channels,
    )
    return config


class SpatialAttention2d(keras.layers.Layer):
  """DOLG self-attention (the official `SpatialAttention2d`).

  x = BN(conv1x1(f)); n = L2-normalise x over channels (before the ReLU);
  a = softplus(conv1x1(ReLU(x)) -> 1 channel); f_l = a * n. Normalisation and
  softplus run in float32. Returns (f_l, a).
  """

  def __init__(self, channels=1024, bn_momentum=0.9, bn_epsilon=1e-5, **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.conv1 = keras.layers.Conv2D(
      channels, 1, kernel_initializer=initializers.pytorch_default(), name="conv1"
    )
    self.bn = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="bn")
    self.conv2 = keras.layers.Conv2D(
      1, 1, kernel_initializer=initializers.pytorch_default(), name="conv2"
    )

  def call(self, x, training=None):
    x = self.bn(self.conv1(x), training=training)
    normalized = normalization.l2_normalize(x, axis=-1)
    attention = tf.math.softplus(tf.cast(self.conv2(tf.nn.relu(x)), tf.float32))
    return attention * normalized, attention

  def get_config(self):
    config = super().get_config()
    config.update(channels=self.channels, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    return config
