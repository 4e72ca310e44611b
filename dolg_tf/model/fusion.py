"""DOLG orthogonal fusion of local and global features."""

import tensorflow as tf

from dolg_tf.keras_api import keras


def orthogonal_component(local_features, global_feature):
  """Removes from every local vector its projection onto the global feature.

  f_l_orth = f_l - ((f_l . f_g) / ||f_g||^2) f_g at each location (the paper's
  and the official code's projection; dividing by ||f_g|| instead, as some ports
  do, is not a projection).

  Args:
    local_features: [B, H, W, C] float32.
    global_feature: [B, C] float32.

  Returns:
    (orthogonal component [B, H, W, C], projection [B, H, W, C]).
  """
  global_feature = tf.cast(global_feature, tf.float32)
  local_features = tf.cast(local_features, tf.float32)
  dots = tf.einsum("bhwc,bc->bhw", local_features, global_feature)
  squared_norm = tf.reduce_sum(tf.square(global_feature), axis=-1)
  # Guards an all-zero f_g only; any real f_g is far above this.
  coefficients = dots / tf.maximum(squared_norm, 1e-12)[:, None, None]
  projection = coefficients[..., None] * global_feature[:, None, None, :]
  return local_features - projection, projection


class OrthogonalFusion(keras.layers.Layer):
  """[f_g, avgpool(f_l_orth)]: the concatenation order of the official code."""

  def __init__(self, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)

  def call(self, local_features, global_feature, return_orthogonal=False):
    orthogonal, _ = orthogonal_component(local_features, global_feature)
    pooled = tf.reduce_mean(orthogonal, axis=[1, 2])
    fused = tf.concat([tf.cast(global_feature, tf.float32), pooled], axis=-1)
    if return_orthogonal:
      return fused, orthogonal
    return fused
