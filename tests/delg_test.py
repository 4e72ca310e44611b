"""Tests for dolg_tf.model.delg."""

import numpy as np
import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, builder, delg

TINY_DELG = config_lib.delg_config(
  backbone_depth=26,
  backbone_width_multiplier=0.125,
  embedding_dim=32,
  delg_reduced_dim=8,
  delg_attention_hidden=16,
)


class DelgModelTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(3)
    cls.model = builder.build_model(TINY_DELG, image_size=64, num_classes=5)
    cls.images = tf.random.stateless_uniform([2, 64, 80, 3], [1, 2], 0.0, 255.0)

  def test_defaults_follow_the_paper(self):
    config = config_lib.delg_config()
    self.assertEqual((config.head_scale, config.head_margin), (45.25, 0.1))
    self.assertEqual(config.embedding_dim, 2048)
    self.assertFalse(config.gem_p_trainable)
    self.assertEqual(config.input_mean, (128.0,) * 3)
    # DELF's network: its ResNet50 layout and block3_strides (local features at stride 32).
    self.assertEqual((config.backbone_layout, config.block3_strides), ("delf", True))
    self.assertEqual((config.resolved_bn_epsilon, config.resolved_bn_momentum), (1e-3, 0.99))

  def test_outputs(self):
    out = self.model(self.images, training=False, return_intermediates=True)
    channels = self.model.backbone.output_channels[0]
    self.assertEqual(out["descriptor"].shape, (2, 32))
    self.assertAllClose(tf.norm(out["descriptor"], axis=-1), [1.0, 1.0], atol=1e-5)
    # DELF at 64 x 80: stem 32 x 40, pool 15 x 19, then 15, 8, 4 (x 19, 10, 5), subsampled.
    self.assertEqual(out["f3"].shape[1:3], (2, 3))
    self.assertEqual(out["reduced_features"].shape, (2, 2, 3, 8))
    self.assertEqual(out["reconstructed_features"].shape, (2, 2, 3, channels))
    self.assertEqual(out["attention"].shape, (2, 2, 3, 1))
    self.assertTrue(np.all(out["attention"].numpy() > 0))
    self.assertEqual(out["attention_logits"].shape, (2, 5))
    # Attention pooling of the L2-normalised reconstruction.
    normalized = tf.math.l2_normalize(out["reconstructed_features"], axis=-1)
    self.assertAllClose(
      out["attention_prelogits"],
      tf.reduce_mean(normalized * out["attention"], axis=[1, 2]),
      atol=1e-5,
    )
    self.assertAllClose(out["descriptor"], self.model(self.images, training=False), atol=1e-6)

  def test_local_losses_send_no_gradient_into_the_backbone(self):
    labels = tf.constant([1, 3])
    with tf.GradientTape(persistent=True) as tape:
      out = self.model(self.images, training=True, return_intermediates=True)
      attention_loss = tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(
          labels, out["attention_logits"], from_logits=True
        )
      )
      reconstruction_loss = tf.reduce_mean(
        tf.square(tf.stop_gradient(out["f3"]) - out["reconstructed_features"])
      )
      global_loss = tf.reduce_sum(out["global_embedding"] * out["global_embedding"][::-1])
    backbone_vars = self.model.backbone.trainable_variables
    for loss in (attention_loss, reconstruction_loss):
      grads = tape.gradient(loss, backbone_vars, unconnected_gradients="zero")
      self.assertEqual(sum(float(tf.reduce_sum(tf.abs(g))) for g in grads), 0.0)
      local_grads = tape.gradient(
        loss, self.model.autoencoder.trainable_variables, unconnected_gradients="zero"
      )
      if loss is reconstruction_loss:
        self.assertGreater(sum(float(tf.reduce_sum(tf.abs(g))) for g in local_grads), 0.0)
    grads = tape.gradient(global_loss, backbone_vars, unconnected_gradients="zero")
    self.assertGreater(sum(float(tf.reduce_sum(tf.abs(g))) for g in grads), 0.0)
    attention_grads = tape.gradient(attention_loss, self.model.attention.trainable_variables)
    self.assertTrue(all(g is not None for g in attention_grads))

  def test_get_config_round_trip(self):
    clone = delg.DelgModel.from_config(self.model.get_config())
    clone(self.images, training=False, return_intermediates=True)
    clone.set_weights(self.model.get_weights())
    self.assertAllClose(clone(self.images, training=False), self.model(self.images, training=False))

  def test_receptive_field(self):
    self.assertEqual(backbones.stage3_receptive_field(50, "keras"), (291, 16, 145))
    self.assertEqual(backbones.stage3_receptive_field(50, "pycls"), (267, 16, 133))
    self.assertEqual(backbones.stage3_receptive_field(50, "keras", True), (291, 32, 145))
    self.assertEqual(
      self.model.receptive_field(), backbones.stage3_receptive_field(26, "delf", True)
    )

  def test_old_keras_layout_configs_still_build_their_layout(self):
    # Saved configs store every field: a run made with the earlier DELG default keeps it.
    old = dict(TINY_DELG.as_dict(), backbone_layout="keras", block3_strides=False)
    config = config_lib.ModelConfig.from_dict(old)
    model = builder.build_model(config, image_size=64)
    self.assertEqual(model.backbone.layout, "keras")
    self.assertEqual(model.backbone.bn_epsilon, 1.001e-5)
    out = model(self.images, training=False, return_intermediates=True)
    self.assertEqual(out["f3"].shape[1:3], (4, 5))


if __name__ == "__main__":
  tf.test.main()
