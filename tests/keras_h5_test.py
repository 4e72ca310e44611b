"""Tests for dolg_tf.model.keras_h5 against keras.applications' own ResNet50."""

import os

import h5py
import numpy as np
import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, builder, keras_h5


class KerasH5Test(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(2)
    cls.reference = keras.applications.ResNet50(
      include_top=False, weights=None, input_shape=(None, None, 3)
    )
    # Non-trivial BatchNorm statistics, as in real ImageNet weights.
    for layer in cls.reference.layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.moving_mean.assign(np.random.normal(0, 0.1, layer.moving_mean.shape))
        layer.moving_variance.assign(np.random.uniform(0.5, 1.5, layer.moving_variance.shape))
    cls.path = os.path.join(tf.compat.v1.test.get_temp_dir(), "resnet50_notop.h5")
    cls.reference.save_weights(cls.path)

  def test_backbone_reproduces_keras_applications_features(self):
    backbone = backbones.ResNetBackbone(50, "keras", bn_momentum=0.99, bn_epsilon=1.001e-5)
    images = tf.random.uniform([2, 75, 64, 3], -1.0, 1.0, seed=3)
    backbone(images)
    # Stem conv+bn, 3 conv+bn pairs per block, a projection pair per stage.
    self.assertEqual(keras_h5.load_backbone_weights(backbone, self.path), 2 + 16 * 6 + 4 * 2)
    f3, f4 = backbone(images, training=False)
    stage3 = keras.Model(self.reference.input, self.reference.get_layer("conv4_block6_out").output)
    self.assertAllClose(f4, self.reference(images, training=False), rtol=1e-4, atol=1e-4)
    self.assertAllClose(f3, stage3(images, training=False), rtol=1e-4, atol=1e-4)

  def test_model_config_reproduces_caffe_preprocessing(self):
    config = config_lib.ModelConfig(backbone_layout="keras", **keras_h5.KERAS_IMAGENET_INPUT)
    model = builder.build_model(config)
    pixels = tf.random.uniform([1, 8, 8, 3], 0.0, 255.0, seed=4)
    expected = keras.applications.resnet.preprocess_input(pixels)
    self.assertAllClose(model.input_normalization(pixels), expected, atol=1e-4)

  def test_delf_layout_loads_the_same_file(self):
    # DELF's resnet50.py starts from these weights: its layers carry the keras names.
    backbone = backbones.ResNetBackbone(50, "delf", block3_strides=True)
    backbone(tf.zeros([1, 32, 32, 3]))
    self.assertEqual(keras_h5.load_backbone_weights(backbone, self.path), 2 + 16 * 6 + 4 * 2)

  def test_errors_name_the_file_and_layer(self):
    pycls = backbones.ResNetBackbone(50, "pycls")
    with self.assertRaisesRegex(ValueError, "backbone_layout 'keras' or 'delf', got 'pycls'"):
      keras_h5.load_backbone_weights(pycls, self.path)
    deeper = backbones.ResNetBackbone(101, "keras")
    deeper(tf.zeros([1, 32, 32, 3]))
    with self.assertRaisesRegex(ValueError, "conv4_block7"):
      keras_h5.load_backbone_weights(deeper, self.path)
    bogus = os.path.join(self.get_temp_dir(), "bogus.h5")
    with h5py.File(bogus, "w") as f:
      f.create_dataset("x", data=np.zeros(3))
    with self.assertRaisesRegex(OSError, "bogus.h5"):
      keras_h5.read_h5_weights(bogus)
    not_h5 = os.path.join(self.get_temp_dir(), "not.h5")
    with open(not_h5, "w") as f:
      f.write("garbage")
    with self.assertRaisesRegex(OSError, "not.h5"):
      keras_h5.read_h5_weights(not_h5)


if __name__ == "__main__":
  tf.test.main()
