"""Builds models and heads from a `dolg_tf.config.ModelConfig`."""

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.keras_api import keras
from dolg_tf.model import delg, dolg, heads


def build_model(
  config: config_lib.ModelConfig, image_size: int | None = None, num_classes: int | None = None
) -> keras.Model:
  """Returns the descriptor model described by `config`.

  Args:
    config: the model configuration.
    image_size: if given, the model is built (weights created) by a call on a
      zero batch of this size; otherwise weights appear on the first call.
    num_classes: DELG only: creates the attention classifier (training).
  """
  if config.name == "delg":
    model = delg.DelgModel(config, num_classes=num_classes)
    if image_size:
      model(tf.zeros([1, image_size, image_size, 3]), training=False, return_intermediates=True)
    return model
  model = dolg.DolgModel(config)
  if image_size:
    model(tf.zeros([1, image_size, image_size, 3]), training=False)
  return model


def build_head(config: config_lib.ModelConfig, num_classes: int) -> heads.CosineHead:
  """Returns the margin head of `config` for `num_classes` classes."""
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if config.head_type == "subcenter_arcface":
    return heads.SubCenterArcFace(
      num_classes,
      scale=config.head_scale,
      margin=config.head_margin,
      margin_max=config.head_margin_max,
      num_subcenters=config.head_num_subcenters,
      name="head",
    )
  head_class = heads.HEADS[config.head_type]
  return head_class(num_classes, scale=config.head_scale, margin=config.head_margin, name="head")
