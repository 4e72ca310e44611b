"""Global pooling layers: generalized mean (GeM) and average pooling."""

import tensorflow as tf

from dolg_tf.keras_api import keras


class GeMPooling(keras.layers.Layer):
  """Generalized-mean pooling over the spatial axes.

  gem(x) = (mean_{h,w} max(x, eps)^p)^(1/p), per channel, computed in float32
  whatever the mixed-precision policy. p=1 is average pooling, p -> inf
  approaches max pooling.
  """

  def __init__(self, p=3.0, trainable_p=True, eps=1e-6, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.initial_p = float(p)
    self.trainable_p = trainable_p
    self.eps = eps

  def build(self, input_shape):
    self.p = self.add_weight(
      name="p",
      shape=[],
      initializer=tf.constant_initializer(self.initial_p),
      trainable=self.trainable_p,
      dtype=tf.float32,
    )
    super().build(input_shape)

  def call(self, x, p=None):
    """GeM of [B, H, W, C] maps; a positive `p` replaces the layer's own exponent (GeM+)."""
    x = tf.cast(x, tf.float32)
    if p is not None:
      p = tf.cast(p, tf.float32)
      p = tf.where(p > 0, p, self.p)
    else:
      p = self.p
    pooled = tf.reduce_mean(tf.pow(tf.maximum(x, self.eps), p), axis=[1, 2])
    return tf.pow(pooled, 1.0 / p)

  def get_config(self):
    config = super().get_config()
    config.update(p=self.initial_p, trainable_p=self.trainable_p, eps=self.eps)
    return config


class AveragePooling(keras.layers.Layer):
  """Spatial average pooling: [B, H, W, C] -> [B, C]."""

  def call(self, x):
    return tf.reduce_mean(x, axis=[1, 2])
