"""Tests for dolg_tf.model.pooling."""

import numpy as np
import tensorflow as tf

from dolg_tf.model import pooling


class GeMPoolingTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.x = tf.random.uniform([2, 5, 7, 6], 0.0, 4.0, seed=3)

  def test_p1_equals_average_pooling(self):
    gem = pooling.GeMPooling(p=1.0, trainable_p=False)
    self.assertAllClose(gem(self.x), tf.reduce_mean(self.x, axis=[1, 2]), rtol=1e-6)
    self.assertAllClose(pooling.AveragePooling()(self.x), tf.reduce_mean(self.x, axis=[1, 2]))

  def test_large_p_approaches_max_pooling(self):
    maxima = tf.reduce_max(self.x, axis=[1, 2])
    errors = []
    for p in (3.0, 20.0, 60.0):
      gem = pooling.GeMPooling(p=p, trainable_p=False)
      errors.append(float(tf.reduce_max(tf.abs(gem(self.x) - maxima))))
    self.assertLess(errors[1], errors[0])
    self.assertLess(errors[2], errors[1])
    # (1/35)^(1/60) > 0.94: within 6% of the max over 35 positions.
    self.assertAllClose(pooling.GeMPooling(p=60.0)(self.x), maxima, rtol=0.07)

  def test_matches_formula_with_clamp(self):
    x = tf.constant(np.array([[[[-1.0], [0.0]], [[2.0], [3.0]]]], np.float32))
    gem = pooling.GeMPooling(p=3.0, eps=1e-6)
    expected = ((1e-18 + 1e-18 + 8.0 + 27.0) / 4.0) ** (1.0 / 3.0)
    self.assertAllClose(gem(x), [[expected]], rtol=1e-6)

  def test_learnable_p_receives_a_gradient(self):
    gem = pooling.GeMPooling(p=3.0, trainable_p=True)
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(gem(self.x))
    (grad,) = tape.gradient(loss, [gem.p])
    self.assertIn(gem.p, gem.trainable_variables)
    self.assertNotEqual(float(grad), 0.0)
    self.assertTrue(np.isfinite(float(grad)))

  def test_fixed_p_is_not_trainable(self):
    gem = pooling.GeMPooling(p=3.0, trainable_p=False)
    gem(self.x)
    self.assertEmpty(gem.trainable_variables)
    self.assertLen(gem.non_trainable_variables, 1)

  def test_computes_in_float32_under_mixed_precision(self):
    gem = pooling.GeMPooling(p=3.0)
    y = gem(tf.cast(self.x * 100.0, tf.float16))  # x^3 overflows float16 (max 65504).
    self.assertEqual(y.dtype, tf.float32)
    self.assertTrue(np.all(np.isfinite(y.numpy())))
    self.assertAllClose(y, gem(self.x * 100.0), rtol=1e-3)

  def test_get_config_round_trip(self):
    gem = pooling.GeMPooling(p=4.5, trainable_p=False, eps=1e-4)
    clone = pooling.GeMPooling.from_config(gem.get_config())
    self.assertAllClose(clone(self.x), gem(self.x))
    self.assertFalse(clone.trainable_p)


if __name__ == "__main__":
  tf.test.main()
