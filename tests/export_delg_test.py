"""Tests for the DELG export (DELF's local+global serving signature)."""

import numpy as np
import tensorflow as tf

from tests import testutil


class DelgExportTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Shared and read-only: built and exported once per process (tests/testutil.py).
    cls.model = testutil.tiny_model("delg")
    cls.export_dir = testutil.tiny_export("delg")
    cls.loaded = testutil.tiny_loaded("delg")
    cls.image = np.random.default_rng(0).integers(0, 256, [70, 90, 3], dtype=np.uint8)

  def _run(self, scales, max_features, threshold, global_ind):
    return self.loaded.signatures["serving_default"](
      input_image=tf.constant(self.image),
      input_scales=tf.constant(scales, tf.float32),
      input_max_feature_num=tf.constant(max_features),
      input_abs_thres=tf.constant(threshold, tf.float32),
      input_global_scales_ind=tf.constant(global_ind, tf.int32),
    )

  def test_keypoints_match_the_model_at_each_scale(self):
    scales = [0.5, 1.0]
    out = {k: v.numpy() for k, v in self._run(scales, 1000, 0.0, [0, 1]).items()}
    rf_size, stride, padding = self.model.receptive_field()
    expected = []
    for scale in scales:
      size = [int(round(70 * scale)), int(round(90 * scale))]
      resized = tf.image.resize(tf.cast(self.image, tf.float32)[None], size)
      model_out = self.model(resized, training=False, return_intermediates=True)
      attention = model_out["attention"].numpy()[0, :, :, 0]
      features = model_out["reduced_features"].numpy()[0]
      for (y, x), score in np.ndenumerate(attention):
        box = np.array([y * stride - padding, x * stride - padding] * 2, np.float32)
        box[2:] += rf_size - 1
        expected.append((score, 1.0 / scale, box / scale, features[y, x]))  # DELF: 1 / s
    self.assertLen(out["scores"], len(expected))  # threshold 0 keeps every location
    order = np.argsort([-e[0] for e in expected], kind="stable")
    self.assertAllClose(out["scores"], [expected[i][0] for i in order], rtol=1e-5)
    for row, i in enumerate(order[:20]):
      self.assertAllClose(out["scales"][row], expected[i][1])
      self.assertAllClose(out["boxes"][row], expected[i][2], atol=1e-3)
      self.assertAllClose(out["features"][row], expected[i][3], atol=1e-4)
    self.assertEqual(out["global_descriptors"].shape, (2, 16))
    pooled = out["global_descriptors"].mean(axis=0)
    self.assertAllClose(out["global_descriptor"], pooled / np.linalg.norm(pooled), atol=1e-5)

  def test_threshold_and_max_feature_num(self):
    everything = self._run([1.0], 1000, 0.0, [0])
    scores = np.sort(everything["scores"].numpy())
    threshold = float(scores[len(scores) // 2])
    above = self._run([1.0], 1000, threshold, [0])["scores"].numpy()
    self.assertEqual(len(above), int(np.sum(scores >= threshold)))
    self.assertTrue(np.all(above >= threshold))
    capped = self._run([1.0], 3, 0.0, [0])
    self.assertEqual(capped["features"].shape, (3, 8))
    self.assertAllClose(capped["scores"], scores[::-1][:3], rtol=1e-6)
    none = self._run([1.0], 10, 1e9, [0])
    self.assertEqual(none["boxes"].shape, (0, 4))

  def test_signatures(self):
    self.assertEqual(
      set(self.loaded.signatures),
      {
        "serving_default",
        "serve_global",
        "serve_encoded",
        "serve_global_batch",
        "serve_local_batch",
      },
    )
    out = self.loaded.signatures["serve_global"](
      input_image=tf.constant(self.image),
      input_scales=tf.constant([1.0]),
      input_global_scales_ind=tf.constant([0]),
    )
    resized_descriptor = self.model(tf.cast(self.image, tf.float32)[None], training=False)
    self.assertAllClose(out["global_descriptor"], resized_descriptor[0], atol=1e-5)


if __name__ == "__main__":
  tf.test.main()
