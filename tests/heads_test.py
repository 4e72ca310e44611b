"""Tests for dolg_tf.model.heads."""

import math

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.model import heads


def _unit(x, axis=-1):
  return x / np.linalg.norm(x, axis=axis, keepdims=True)


class ArcFaceTest(tf.test.TestCase, parameterized.TestCase):
  def setUp(self):
    super().setUp()
    self.embeddings = tf.random.normal([4, 8], seed=7)
    self.labels = tf.constant([0, 1, 2, 1])

  def _cosines(self, head):
    return _unit(self.embeddings.numpy()) @ _unit(head.kernel.numpy(), axis=0)

  def test_zero_margin_gives_scaled_cosines(self):
    head = heads.ArcFace(num_classes=5, scale=30.0, margin=0.0)
    logits = head(self.embeddings, self.labels, training=True)
    self.assertAllClose(logits, 30.0 * self._cosines(head), atol=1e-4)

  def test_margin_lowers_only_the_target_logit(self):
    plain = heads.ArcFace(num_classes=5, scale=30.0, margin=0.0)
    plain(self.embeddings, self.labels)
    with_margin = heads.ArcFace(num_classes=5, scale=30.0, margin=0.15)
    with_margin(self.embeddings, self.labels)
    with_margin.kernel.assign(plain.kernel)
    a = plain(self.embeddings, self.labels).numpy()
    b = with_margin(self.embeddings, self.labels).numpy()
    target = np.eye(5, dtype=bool)[self.labels.numpy()]
    self.assertTrue(np.all(b[target] < a[target]))
    self.assertAllClose(b[~target], a[~target])
    # cos(theta + m) exactly.
    theta = np.arccos(a[target] / 30.0)
    self.assertAllClose(b[target], 30.0 * np.cos(theta + 0.15), atol=1e-3)

  def test_no_margin_where_theta_exceeds_pi_minus_m(self):
    head = heads.ArcFace(num_classes=2, scale=1.0, margin=0.5)
    head.build([None, 2])
    head.kernel.assign([[1.0, 0.0], [0.0, 1.0]])
    # Embedding at 170 degrees from class 0: theta > pi - m, plain cosine kept.
    angle = math.radians(170.0)
    logits = head(tf.constant([[math.cos(angle), math.sin(angle)]]), tf.constant([0]))
    self.assertAllClose(logits[0, 0], math.cos(angle), atol=1e-5)

  @parameterized.parameters("arcface", "curricularface", "subcenter_arcface")
  def test_no_nan_at_cosine_plus_minus_one(self, head_type):
    head = heads.HEADS[head_type](num_classes=2, scale=30.0, margin=0.15)
    head.build([None, 2])
    kernel = [[1.0, -1.0], [0.0, 0.0]]
    if head.num_subcenters > 1:
      kernel = np.repeat(np.array(kernel), head.num_subcenters, axis=1)
    head.kernel.assign(kernel)
    embeddings = tf.constant([[1.0, 0.0], [-1.0, 0.0]])
    labels = tf.constant([0, 0])
    with tf.GradientTape() as tape:
      tape.watch(embeddings)
      logits = head(embeddings, labels, training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, [embeddings, head.kernel])
    self.assertTrue(np.all(np.isfinite(logits.numpy())))
    for g in grads:
      self.assertTrue(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())))

  def test_float32_under_mixed_precision(self):
    head = heads.ArcFace(num_classes=3)
    logits = head(tf.cast(self.embeddings, tf.float16), self.labels)
    self.assertEqual(logits.dtype, tf.float32)

  def test_no_labels_gives_scaled_cosines(self):
    head = heads.ArcFace(num_classes=5, scale=10.0, margin=0.3)
    self.assertAllClose(head(self.embeddings), 10.0 * self._cosines(head), atol=1e-4)

  @parameterized.parameters("arcface", "curricularface", "subcenter_arcface")
  def test_get_config_round_trip(self, head_type):
    head = heads.HEADS[head_type](num_classes=7, scale=20.0, margin=0.2)
    head(self.embeddings, self.labels)
    clone = type(head).from_config(head.get_config())
    clone(self.embeddings, self.labels)
    clone.set_weights(head.get_weights())
    self.assertEqual(clone.get_config(), head.get_config())
    self.assertAllClose(clone(self.embeddings, self.labels), head(self.embeddings, self.labels))


class CurricularFaceTest(tf.test.TestCase):
  def test_matches_official_formula_and_updates_t_only_in_training(self):
    head = heads.CurricularFace(num_classes=6, scale=30.0, margin=0.15)
    embeddings = tf.random.normal([5, 8], seed=8)
    labels = tf.constant([0, 1, 2, 3, 4])
    head.build([None, 8])
    head.t.assign(0.3)
    cos = np.clip(_unit(embeddings.numpy()) @ _unit(head.kernel.numpy(), axis=0), -1, 1)
    logits = head(embeddings, labels, training=True).numpy()
    # Re-derivation of the official `Arcface` (CurricularFace) forward.
    target = cos[np.arange(5), labels.numpy()][:, None]
    m = 0.15
    target_m = target * math.cos(m) - np.sqrt(1 - target**2) * math.sin(m)
    final_target = np.where(
      target > math.cos(math.pi - m), target_m, target - math.sin(math.pi - m) * m
    )
    t = 0.01 * target.mean() + 0.99 * 0.3
    expected = np.where(cos > target_m, cos * (t + cos), cos)
    expected[np.arange(5), labels.numpy()] = final_target[:, 0]
    self.assertAllClose(logits, 30.0 * expected, atol=1e-3)
    self.assertAllClose(head.t, t, atol=1e-6)
    self.assertEqual([v.name for v in head.trainable_variables], [head.kernel.name])
    head(embeddings, labels, training=False)
    self.assertAllClose(head.t, t, atol=1e-6)


class SubCenterArcFaceTest(tf.test.TestCase):
  def test_cosine_is_max_over_subcentres(self):
    head = heads.SubCenterArcFace(num_classes=3, num_subcenters=2)
    embeddings = tf.random.normal([4, 5], seed=9)
    head(embeddings)
    cos = _unit(embeddings.numpy()) @ _unit(head.kernel.numpy(), axis=0)
    expected = cos.reshape(4, 3, 2).max(axis=-1)
    self.assertAllClose(head.cosine(embeddings), expected, atol=1e-5)

  def test_dynamic_margins_favour_rare_classes(self):
    margins = heads.dynamic_margins([1000, 10, 100], 0.05, 0.5)
    self.assertAllClose(
      margins,
      [0.05, 0.5, 0.05 + 0.45 * (100**-0.25 - 1000**-0.25) / (10**-0.25 - 1000**-0.25)],
      atol=1e-6,
    )
    for bad in ([3, -1], [0, 0], [[1, 2]]):
      with self.assertRaisesRegex(ValueError, "class counts must be"):
        heads.dynamic_margins(bad, 0.05, 0.5)

  def test_dynamic_margins_with_empty_classes(self):
    # Min and max of n^-1/4 over the classes with images only (1 and 16:
    # 1 and 1/2), as the winner's value_counts; empty classes get margin_max.
    # Class 16: (1/2 - 1/2) / (1 - 1/2) -> 0.05; class 1 -> 0.5.
    margins = heads.dynamic_margins([0, 16, 1, 0], 0.05, 0.5)
    self.assertAllClose(margins, [0.5, 0.05, 0.5, 0.5], atol=1e-7)
    # The present classes' margins are those without the empty classes.
    margins = heads.dynamic_margins([1, 0, 16, 81, 0, 10000], 0.05, 0.5)
    self.assertAllClose(margins, [0.5, 0.5, 0.25, 1.0 / 6.0, 0.5, 0.05], atol=1e-7)
    # All present classes equally frequent: they get margin_min.
    self.assertAllClose(heads.dynamic_margins([5, 0, 5], 0.05, 0.5), [0.05, 0.5, 0.05])
    self.assertEqual(heads.dynamic_margins([5, 0, 5], 0.05, 0.5).dtype, np.float32)

  def test_set_class_counts_with_an_empty_class(self):
    head = heads.SubCenterArcFace(3, scale=45.0, margin=0.05, margin_max=0.5, num_subcenters=2)
    head(tf.zeros([1, 4]))
    head.set_class_counts(np.array([16, 0, 1], np.int64))
    self.assertAllClose(head.class_margins, [0.05, 0.5, 0.5])

  def test_dynamic_margins_are_the_glr2021_winners(self):
    # ChristofHenkel/kaggle-landmark-2021-1st-place, data/ch_ds_1.py: tmp =
    # sqrt(1 / sqrt(value_counts)) = n^-1/4; margins = (tmp - tmp.min()) /
    # (tmp.max() - tmp.min()) * arcface_m_x + arcface_m_y, with
    # configs/default_config.py arcface_m_x = 0.45, arcface_m_y = 0.05.
    # By hand for n = 1, 16, 81, 10000: tmp = 1, 1/2, 1/3, 1/10, so
    # margins = (tmp - 0.1) / 0.9 * 0.45 + 0.05 = (tmp - 0.1) / 2 + 0.05.
    margins = heads.dynamic_margins([1, 16, 81, 10000], 0.05, 0.05 + 0.45)
    self.assertAllClose(margins, [0.5, 0.25, 1.0 / 6.0, 0.05], atol=1e-7)

  def test_glr2021_target_logit_both_branches(self):
    # ArcFaceLossAdaptiveMargin (models/ch_mdl_dolg_efficientnet.py): target
    # phi = cos(theta + m) where cos > cos(pi - m), else cos - sin(pi - m) * m;
    # other classes keep cos; all times s = 45. ArcMarginProduct_subcenter: k = 3
    # class-major columns (weight.view(-1, n_classes, k)), cosine = their max.
    head = heads.SubCenterArcFace(
      num_classes=2, scale=45.0, margin=0.05, margin_max=0.5, num_subcenters=3
    )
    head.build([None, 2])

    def set_centres(degrees):  # [c0k0, c0k1, c0k2, c1k0, c1k1, c1k2]
      rad = np.radians(degrees)
      head.kernel.assign(np.stack([np.cos(rad), np.sin(rad)]).astype(np.float32))

    def at(degrees):
      rad = math.radians(degrees)
      return [math.cos(rad), math.sin(rad)]

    head.set_class_counts([10000, 1])  # margins 0.05 and 0.5 (see above)
    set_centres([0.0, 100.0, 170.0, 90.0, 179.0, 178.0])
    logits = head(tf.constant([at(10.0), at(180.0)]), tf.constant([0, 1])).numpy()
    ten, one = math.radians(10.0), math.radians(1.0)
    # Example 0 (class 0): nearest sub-centre 10 degrees away, margin 0.05.
    self.assertAllClose(logits[0, 0], 45.0 * math.cos(ten + 0.05), atol=1e-4)
    # Not its class: the nearest of class 1's sub-centres, 80 degrees, no margin.
    self.assertAllClose(logits[0, 1], 45.0 * math.cos(math.radians(80.0)), atol=1e-4)
    # Example 1 (class 1): nearest sub-centre 1 degree away, margin 0.5.
    self.assertAllClose(logits[1, 1], 45.0 * math.cos(one + 0.5), atol=1e-3)
    self.assertAllClose(logits[1, 0], 45.0 * math.cos(ten), atol=1e-4)
    # The other branch: 170 degrees from every class-1 sub-centre, beyond pi - 0.5.
    set_centres([0.0] * 3 + [90.0] * 3)
    logits = head(tf.constant([at(260.0)]), tf.constant([1])).numpy()
    cos = math.cos(math.radians(170.0))
    self.assertLess(cos, math.cos(math.pi - 0.5))
    self.assertAllClose(logits[0, 1], 45.0 * (cos - math.sin(math.pi - 0.5) * 0.5), atol=1e-4)

  def test_per_class_margin_applied_to_target(self):
    head = heads.SubCenterArcFace(
      num_classes=2, scale=1.0, margin=0.1, margin_max=0.4, num_subcenters=1
    )
    head.build([None, 2])
    head.kernel.assign([[1.0, 0.0], [0.0, 1.0]])
    head.set_class_counts([100, 1])  # class 0: 0.1, class 1: 0.4
    angle = 0.3
    embeddings = tf.constant(
      [[math.cos(angle), math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    logits = head(embeddings, tf.constant([0, 1])).numpy()
    self.assertAllClose(logits[0, 0], math.cos(angle + 0.1), atol=1e-5)
    self.assertAllClose(logits[1, 1], math.cos(angle + 0.4), atol=1e-5)
    self.assertAllClose(logits[0, 1], math.sin(angle), atol=1e-5)


if __name__ == "__main__":
  tf.test.main()
