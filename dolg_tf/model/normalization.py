"""Numerically careful normalisation helpers shared by the model layers."""

import tensorflow as tf

from dolg_tf.keras_api import keras

# PyTorch's F.normalize eps: x / max(||x||, eps).
L2_EPSILON = 1e-12


def l2_normalize(x, axis=-1, epsilon=L2_EPSILON):
  """x / max(||x||_2, epsilon) along `axis`, computed in float32."""
  x = tf.cast(x, tf.float32)
  # rsqrt(max(sum x^2, eps^2)) == 1 / max(||x||, eps), without tf.norm's NaN gradient at 0.
  squared_norm = tf.reduce_sum(tf.square(x), axis=axis, keepdims=True)
  return x * tf.math.rsqrt(tf.maximum(squared_norm, epsilon * epsilon))


class InputNormalization(keras.layers.Layer):
  """Maps RGB pixels in [0, 255] to the network's input space.

  (pixel - mean) / std per channel, then optionally RGB -> BGR (the official
  DOLG weights were trained on BGR input; mean/std are given in RGB order).
  """

  def __init__(self, mean, std, channel_order="RGB", **kwargs):
    super().__init__(**kwargs)
    self.mean = tuple(float(v) for v in mean)
    self.std = tuple(float(v) for v in std)
    self.channel_order = channel_order

  def call(self, images):
    images = tf.cast(images, self.compute_dtype)
    mean = tf.constant(self.mean, dtype=self.compute_dtype)
    inv_std = tf.constant([1.0 / s for s in self.std], dtype=self.compute_dtype)
    x = (images - mean) * inv_std
    if self.channel_order == "BGR":
      x = x[..., ::-1]
    return x

  def get_config(self):
    config = super().get_config()
    config.update(mean=self.mean, std=self.std, channel_order=self.channel_order)
    return config
