"""Tests for dolg_tf.model.dolg and dolg_tf.model.builder."""

import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf.keras_api import keras
from dolg_tf.model import builder, dolg
from tests import testutil


def _images(batch, height, width, seed):
  return tf.random.stateless_uniform([batch, height, width, 3], [seed, 0], 0.0, 255.0)


class DolgModelTest(tf.test.TestCase, parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(0)
    cls.config = config_lib.ModelConfig(embedding_dim=64)
    cls.model = builder.build_model(cls.config, image_size=64)

  def test_descriptor_is_l2_normalised(self):
    descriptors = self.model(_images(3, 64, 64, 1), training=False)
    self.assertEqual(descriptors.shape, (3, 64))
    self.assertEqual(descriptors.dtype, tf.float32)
    self.assertAllClose(tf.norm(descriptors, axis=-1), tf.ones([3]), atol=1e-5)

  def test_inference_is_independent_of_batch_companions(self):
    image = _images(1, 64, 64, 2)
    alone = self.model(image, training=False)
    with_others = self.model(tf.concat([_images(2, 64, 64, 3), image], 0), training=False)
    self.assertAllClose(alone[0], with_others[2], atol=1e-5)

  @parameterized.parameters((63, 65), (64, 96), (97, 50))
  def test_odd_and_even_sizes(self, height, width):
    out = self.model(_images(2, height, width, 4), training=False, return_intermediates=True)
    self.assertEqual(out["f3"].shape, (2, -(-height // 16), -(-width // 16), 1024))
    self.assertEqual(out["f4"].shape, (2, -(-height // 32), -(-width // 32), 2048))
    self.assertTrue(np.all(np.isfinite(out["descriptor"].numpy())))

  def test_intermediates_are_consistent(self):
    out = self.model(_images(2, 64, 64, 5), training=False, return_intermediates=True)
    self.assertEqual(set(out), set(dolg.INTERMEDIATES))
    self.assertEqual(out["f_g"].shape, (2, 1024))
    self.assertEqual(out["f_l"].shape, (2, 4, 4, 1024))
    self.assertEqual(out["f_o"].shape, (2, 2048))
    self.assertAllClose(out["f_o"][:, :1024], out["f_g"])
    self.assertAllClose(
      out["f_o"][:, 1024:], tf.reduce_mean(out["f_l_orth"], axis=[1, 2]), atol=1e-5
    )
    dots = tf.einsum("bhwc,bc->bhw", out["f_l_orth"], out["f_g"])
    norms = tf.norm(out["f_l"], axis=-1) * tf.norm(out["f_g"], axis=-1)[:, None, None]
    # Relative to ||f_l|| ||f_g||; locations whose attention underflowed to ~0 carry no signal.
    ratios = tf.boolean_mask(tf.abs(dots) / norms, norms > 1e-6)
    self.assertGreater(int(tf.size(ratios)), 0)
    self.assertLess(float(tf.reduce_max(ratios)), 1e-5)
    self.assertAllClose(out["descriptor"], tf.math.l2_normalize(out["embedding"], -1), atol=1e-6)
    self.assertAllClose(out["descriptor"], self.model(_images(2, 64, 64, 5), training=False))

  def test_get_config_round_trip_gives_identical_outputs(self):
    clone = dolg.DolgModel.from_config(self.model.get_config())
    images = _images(2, 64, 64, 6)
    clone(images, training=False)
    clone.set_weights(self.model.get_weights())
    self.assertAllEqual(clone(images, training=False), self.model(images, training=False))

  def test_saved_model_round_trip_gives_identical_outputs(self):
    export_dir = os.path.join(self.create_tempdir().full_path, "saved_model")
    # The same DolgModel class at the tiny size: serialising the R50 took most of this file's time.
    keras.utils.set_random_seed(0)
    model = builder.build_model(testutil.TINY_DOLG, image_size=64)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def serve(images):
      return {"descriptor": model(images, training=False)}

    tf.saved_model.save(model, export_dir, signatures={"serving_default": serve})
    loaded = tf.saved_model.load(export_dir)
    images = _images(2, 70, 45, 7)
    restored = loaded.signatures["serving_default"](images=images)["descriptor"]
    self.assertAllClose(restored, model(images, training=False), atol=1e-6)

  def test_training_mode_uses_batch_statistics(self):
    images = _images(2, 64, 64, 8)
    clone = dolg.DolgModel.from_config(self.model.get_config())
    clone(images)
    clone.set_weights(self.model.get_weights())
    train_out = clone(images, training=True)
    infer_out = clone(images, training=False)
    self.assertGreater(float(tf.reduce_max(tf.abs(train_out - infer_out))), 1e-4)


class DolgVariantsTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.named_parameters(
    ("multi_atrous_official", dict(use_multi_atrous=True)),
    ("multi_atrous_paper", dict(use_multi_atrous=True, atrous_dilations=(3, 6, 9))),
    ("fixed_p_keras_layout", dict(gem_p_trainable=False, backbone_layout="keras")),
    ("bgr_block3_strides", dict(input_channel_order="BGR", block3_strides=True)),
    (
      "tiny",
      dict(backbone_depth=26, backbone_width_multiplier=0.25, local_dim=64, use_multi_atrous=True),
    ),
  )
  def test_variants_build_and_run(self, overrides):
    config = config_lib.ModelConfig(embedding_dim=32, **overrides)
    model = builder.build_model(config)
    out = model(_images(1, 64, 48, 9), training=False, return_intermediates=True)
    self.assertEqual(out["descriptor"].shape, (1, 32))
    self.assertEqual(model.multi_atrous is not None, config.use_multi_atrous)
    p_trainable = any("pool_g" in v.name for v in model.trainable_variables)
    self.assertEqual(p_trainable, config.gem_p_trainable)

  def test_bgr_order_reverses_channels_after_normalisation(self):
    rgb = builder.build_model(config_lib.ModelConfig(embedding_dim=16))
    bgr = builder.build_model(config_lib.ModelConfig(embedding_dim=16, input_channel_order="BGR"))
    images = _images(1, 32, 32, 10)
    self.assertAllClose(bgr.input_normalization(images), rgb.input_normalization(images)[..., ::-1])

  @parameterized.parameters("mixed_float16", "mixed_bfloat16")
  def test_mixed_precision(self, policy):
    config = testutil.TINY_DOLG  # the policy logic does not depend on the network's size
    reference = builder.build_model(config, image_size=64)
    keras.mixed_precision.set_global_policy(policy)
    try:
      model = builder.build_model(config, image_size=64)
      model.set_weights(reference.get_weights())
      images = _images(2, 64, 64, 11)
      out = model(images, training=False, return_intermediates=True)
      self.assertEqual(model.backbone.compute_dtype, policy.split("_")[1])
      self.assertEqual(model.pool_g.compute_dtype, "float32")
      self.assertEqual(model.backbone.stem_conv.kernel.dtype, tf.float32)  # float32 master weights
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(images, training=True))
      grads = tape.gradient(loss, model.trainable_variables)
    finally:
      keras.mixed_precision.set_global_policy("float32")
    self.assertEqual(out["descriptor"].dtype, tf.float32)
    self.assertTrue(all(np.all(np.isfinite(g.numpy())) for g in grads if g is not None))
    expected = reference(images, training=False)
    # Cosine between half- and full-precision descriptors.
    cosine = tf.reduce_sum(out["descriptor"] * expected, axis=-1)
    self.assertAllGreater(cosine, 0.98)


class ModelConfigTest(tf.test.TestCase):
  def test_save_and_load_round_trip(self):
    config = config_lib.ModelConfig(
      backbone_depth=101,
      use_multi_atrous=True,
      atrous_dilations=(3, 6, 9),
      head_type="curricularface",
    )
    path = config_lib.save_model_config(config, self.create_tempdir().full_path)
    self.assertEqual(config_lib.load_model_config(path), config)
    self.assertEqual(config_lib.load_model_config(os.path.dirname(path)), config)

  def test_invalid_values_name_the_field(self):
    with self.assertRaisesRegex(ValueError, "backbone_depth"):
      config_lib.ModelConfig(backbone_depth=34)
    with self.assertRaisesRegex(ValueError, "head_type"):
      config_lib.ModelConfig(head_type="softmax")
    with self.assertRaisesRegex(ValueError, "unknown model field.*depth"):
      config_lib.ModelConfig.from_dict({"depth": 50})

  def test_corrupt_config_file_names_the_file(self):
    path = os.path.join(self.create_tempdir().full_path, "model_config.json")
    with open(path, "w") as f:
      f.write("{not json")
    with self.assertRaisesRegex(ValueError, "model_config.json"):
      config_lib.load_model_config(path)
    with self.assertRaisesRegex(FileNotFoundError, "nowhere"):
      config_lib.load_model_config("/nowhere/model_config.json")

  def test_layout_defaults_for_batchnorm(self):
    self.assertEqual(config_lib.ModelConfig().resolved_bn_momentum, 0.9)
    self.assertEqual(config_lib.ModelConfig(backbone_layout="keras").resolved_bn_epsilon, 1.001e-5)
    self.assertEqual(config_lib.ModelConfig(bn_momentum=0.5).resolved_bn_momentum, 0.5)

  def test_build_head_follows_config(self):
    head = builder.build_head(
      config_lib.ModelConfig(head_type="subcenter_arcface", head_scale=20.0), num_classes=9
    )
    self.assertEqual(head.num_subcenters, 3)
    self.assertEqual(head.scale, 20.0)
    with self.assertRaisesRegex(ValueError, "num_classes"):
      builder.build_head(config_lib.ModelConfig(), 0)


if __name__ == "__main__":
  tf.test.main()
