"""Weight initialisers that mirror the official PyTorch code's defaults."""

from dolg_tf.keras_api import keras


def pytorch_default():
  """PyTorch's default Conv/Linear kernel init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  (kaiming_uniform with a=sqrt(5).) The official DOLG local branch and fc
  layers keep this default; Keras' Glorot init would start them larger.
  """
  return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")
