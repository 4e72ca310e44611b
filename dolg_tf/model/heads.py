"""Margin-based cosine classifier heads for metric learning.

Each head holds a class-weight matrix [embedding_dim, num_classes], computes
cosines between L2-normalised embeddings and class weights, applies its margin
to the target class and returns scaled logits for softmax cross-entropy. The
margin math always runs in float32.
"""

import math

import numpy as np
import tensorflow as tf

from dolg_tf.keras_api import keras
from dolg_tf.model import normalization

# Keeps acos/sqrt gradients finite at cos = +-1.
_COS_CLIP = 1.0 - 1e-7


class CosineHead(keras.layers.Layer):
  """Base class: class weights and the cosine matrix; subclasses add margins."""

  def __init__(self, num_classes, scale=30.0, margin=0.15, num_subcenters=1, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.num_classes = int(num_classes)
    self.scale = float(scale)
    self.margin = float(margin)
    self.num_subcenters = int(num_subcenters)

  def build(self, input_shape):
    embedding_dim = int(input_shape[-1])
    self.kernel = self.add_weight(
      name="kernel",
      shape=[embedding_dim, self.num_classes * self.num_subcenters],
      initializer=keras.initializers.GlorotUniform(),
      dtype=tf.float32,
    )
    super().build(input_shape)

  def cosine(self, embeddings):
    """[B, num_classes] cosines (max over sub-centres if there are several)."""
    embeddings = normalization.l2_normalize(embeddings, axis=-1)
    weights = normalization.l2_normalize(self.kernel, axis=0)
    cosines = tf.matmul(embeddings, weights)
    if self.num_subcenters > 1:
      cosines = tf.reshape(cosines, [-1, self.num_classes, self.num_subcenters])
      cosines = tf.reduce_max(cosines, axis=-1)
    return tf.clip_by_value(cosines, -_COS_CLIP, _COS_CLIP)

  def call(self, embeddings, labels=None, training=None, return_cosines=False):
    """Returns scaled logits; without labels, plain scaled cosines (no margin).

    With `return_cosines`, returns (logits, cosines): the margin-free cosines
    give the training accuracy without a second class-weight product.
    """
    cosines = self.cosine(embeddings)
    if labels is None:
      logits = self.scale * cosines
    else:
      labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
      logits = self.scale * self.apply_margin(cosines, labels, training)
    return (logits, cosines) if return_cosines else logits

  def apply_margin(self, cosines, labels, training):
    raise NotImplementedError

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, scale=self.scale, margin=self.margin)
    return config


class ArcFace(CosineHead):
  """ArcFace (Deng et al.) in the DELG form.

  Target logit cos(theta + m) only where theta <= pi - m (there cos(theta + m)
  is still decreasing in theta); elsewhere the plain cosine, as in DELG.
  """

  def apply_margin(self, cosines, labels, training):
    theta = tf.acos(cosines)
    one_hot = tf.one_hot(labels, self.num_classes, on_value=True, off_value=False)
    use_margin = tf.logical_and(one_hot, theta <= math.pi - self.margin)
    return tf.where(use_margin, tf.cos(theta + self.margin), cosines)


class CurricularFace(CosineHead):
  """CurricularFace (Huang et al.), as the official DOLG code's `Arcface` class.

  Target: cos(theta + m) if cos(theta) > cos(pi - m), else
  cos(theta) - sin(pi - m) * m. Non-target cosines harder than the target's
  margin cosine become cos * (t + cos), where t is an EMA of the mean target
  cosine (t <- 0.01 * mean + 0.99 * t), updated in training only and kept as a
  non-trainable variable (the official `desc_cls.t` buffer).
  """

  def build(self, input_shape):
    super().build(input_shape)
    self.t = self.add_weight(
      name="t",
      shape=[],
      initializer="zeros",
      trainable=False,
      dtype=tf.float32,
      aggregation=tf.VariableAggregation.MEAN,
    )

  def apply_margin(self, cosines, labels, training):
    one_hot = tf.one_hot(labels, self.num_classes, on_value=True, off_value=False)
    target = tf.gather(cosines, labels, axis=1, batch_dims=1)[:, None]
    sin_target = tf.sqrt(1.0 - tf.square(target))
    target_with_margin = target * math.cos(self.margin) - sin_target * math.sin(self.margin)
    threshold = math.cos(math.pi - self.margin)
    final_target = tf.where(
      target > threshold, target_with_margin, target - math.sin(math.pi - self.margin) * self.margin
    )
    if training:
      new_t = 0.01 * tf.reduce_mean(tf.stop_gradient(target)) + 0.99 * self.t
      self.t.assign(new_t)
      t = new_t
    else:
      t = tf.identity(self.t)
    hard = cosines > target_with_margin
    modulated = tf.where(hard, cosines * (t + cosines), cosines)
    return tf.where(one_hot, tf.broadcast_to(final_target, tf.shape(cosines)), modulated)


class SubCenterArcFace(CosineHead):
  """Sub-center ArcFace with per-class dynamic margins (GLR 2021 winner's head).

  K sub-centres per class (cosine = max over them); class c's margin is
  m_c = m_min + (m_max - m_min) * (n_c^-1/4 - min) / (max - min) over the class
  counts n_c (rare classes get larger margins). Counts are set with
  `set_class_counts`; until then every class uses m_min. Target: cos(theta + m_c)
  where cos(theta) > cos(pi - m_c), else cos(theta) - sin(pi - m_c) m_c.
  """

  def __init__(
    self, num_classes, scale=30.0, margin=0.05, margin_max=0.5, num_subcenters=3, **kwargs
  ):
    super().__init__(
      num_classes, scale=scale, margin=margin, num_subcenters=num_subcenters, **kwargs
    )
    self.margin_max = float(margin_max)

  def build(self, input_shape):
    super().build(input_shape)
    self.class_margins = self.add_weight(
      name="class_margins",
      shape=[self.num_classes],
      trainable=False,
      dtype=tf.float32,
      initializer=tf.constant_initializer(self.margin),
    )

  def set_class_counts(self, counts):
    """Sets per-class margins from the number of training images per class."""
    self.class_margins.assign(dynamic_margins(counts, self.margin, self.margin_max))

  def apply_margin(self, cosines, labels, training):
    margins = tf.gather(self.class_margins, labels)[:, None]
    one_hot = tf.one_hot(labels, self.num_classes, on_value=True, off_value=False)
    sin = tf.sqrt(1.0 - tf.square(cosines))
    with_margin = cosines * tf.cos(margins) - sin * tf.sin(margins)
    with_margin = tf.where(
      cosines > tf.cos(math.pi - margins),
      with_margin,
      cosines - tf.sin(math.pi - margins) * margins,
    )
    return tf.where(one_hot, with_margin, cosines)

  def get_config(self):
    config = super().get_config()
    config.update(margin_max=self.margin_max, num_subcenters=self.num_subcenters)
    return config


def dynamic_margins(counts, margin_min, margin_max):
  """Per-class margins from class counts: larger for rarer classes (n^-1/4 scaled).

  m_c = margin_min + (margin_max - margin_min) * (n_c^-1/4 - lo) / (hi - lo),
  lo and hi the min and max of n^-1/4 over the classes that have images (as
  the GLR 2021 winner, whose pandas value_counts holds only present classes).
  A class with no training image gets margin_max: n^-1/4 grows without bound
  as n -> 0, so it is the rarest class; it is never a training target, so its
  margin changes no loss.

  Args:
    counts: training images per class (1-D, non-negative, one positive).
    margin_min: the margin of the most frequent class.
    margin_max: the margin of the rarest class (and of empty classes).

  Returns:
    float32 margins, one per class.

  Raises:
    ValueError: counts not 1-D, negative, or all zero.
  """
  counts = np.asarray(counts, dtype=np.float64)
  if counts.ndim != 1 or np.any(counts < 0) or not np.any(counts > 0):
    raise ValueError("class counts must be a 1-D array of non-negative numbers, one positive")
  present = counts > 0
  inv = np.full_like(counts, np.inf)
  inv[present] = counts[present] ** -0.25
  low, high = inv[present].min(), inv[present].max()
  spread = high - low
  unit = (inv - low) / spread if spread > 0 else np.zeros_like(inv)
  unit[~present] = 1.0
  return (margin_min + (margin_max - margin_min) * unit).astype(np.float32)


HEADS = {
  "arcface": ArcFace,
  "curricularface": CurricularFace,
  "subcenter_arcface": SubCenterArcFace,
}
