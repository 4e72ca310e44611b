"""Tests for dolg_tf.model.fusion."""

import numpy as np
import tensorflow as tf

from dolg_tf.model import fusion


class OrthogonalFusionTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.f_l = tf.random.normal([3, 4, 5, 16], seed=5)
    self.f_g = tf.random.normal([3, 16], seed=6) * 7.0

  def test_every_location_is_orthogonal_to_the_global_feature(self):
    orthogonal, _ = fusion.orthogonal_component(self.f_l, self.f_g)
    dots = tf.einsum("bhwc,bc->bhw", orthogonal, self.f_g)
    norms = tf.norm(orthogonal, axis=-1) * tf.norm(self.f_g, axis=-1)[:, None, None]
    self.assertLess(float(tf.reduce_max(tf.abs(dots) / norms)), 1e-5)

  def test_orthogonal_component_plus_projection_reconstructs_local_features(self):
    orthogonal, projection = fusion.orthogonal_component(self.f_l, self.f_g)
    self.assertAllClose(orthogonal + projection, self.f_l, atol=1e-5)
    # The projection is parallel to f_g.
    cosines = tf.einsum("bhwc,bc->bhw", projection, self.f_g) / (
      tf.norm(projection, axis=-1) * tf.norm(self.f_g, axis=-1)[:, None, None]
    )
    self.assertAllClose(tf.abs(cosines), tf.ones_like(cosines), atol=1e-5)

  def test_projection_divides_by_squared_norm(self):
    # A true projection does not depend on the scale of f_g (dividing by
    # ||f_g|| instead of ||f_g||^2 would scale it).
    _, projection = fusion.orthogonal_component(self.f_l, self.f_g)
    _, scaled = fusion.orthogonal_component(self.f_l, 10.0 * self.f_g)
    self.assertAllClose(projection, scaled, atol=1e-4)

  def test_fusion_concatenates_global_then_pooled_orthogonal(self):
    fused, orthogonal = fusion.OrthogonalFusion()(self.f_l, self.f_g, return_orthogonal=True)
    self.assertEqual(fused.shape, (3, 32))
    self.assertAllClose(fused[:, :16], self.f_g)
    self.assertAllClose(fused[:, 16:], tf.reduce_mean(orthogonal, axis=[1, 2]), atol=1e-6)

  def test_zero_global_feature_gives_no_nan(self):
    orthogonal, _ = fusion.orthogonal_component(self.f_l, tf.zeros([3, 16]))
    self.assertTrue(np.all(np.isfinite(orthogonal.numpy())))
    self.assertAllClose(orthogonal, self.f_l)


if __name__ == "__main__":
  tf.test.main()
