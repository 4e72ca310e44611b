"""Builds models and heads from a `dolg_tf.config.ModelConfig`."""

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.model import delg, dolg, heads


def build_model(
  config: config_lib.ModelConfig, image_size: int | None = None, num_classes: int | None = None
) -> tf.keras.Model:
  """Returns the descriptor model described by `config`.

  Args:
    config: the model configuration.
    image_size: if given, the model is built (weights created) by a call on a
      zero batch of this size; otherwise weights appear on the first call.
    num_classes: DELG only: creates the attention classifier (training).
  """
  common = dict(
    depth=config.backbone_depth,
    layout=config.backbone_layout,
    block3_strides=config.block3_strides,
    bn_momentum=config.resolved_bn_momentum,
    bn_epsilon=config.resolved_bn_epsilon,
    input_mean=config.input_mean,
    input_std=config.input_std,
    input_channel_order=config.input_channel_order,
    gem_p=config.gem_p,
    gem_p_trainable=config.gem_p_trainable,
    gem_eps=config.gem_eps,
    embedding_dim=config.embedding_dim,
    width_multiplier=config.backbone_width_multiplier,
    name=config.name,
  )
  if config.name == "delg":
    model = delg.DelgModel(
      num_classes=num_classes,
      reduced_dim=config.delg_reduced_dim,
      attention_hidden=config.delg_attention_hidden,
      **common,
    )
    if image_size:
      model(tf.zeros([1, image_size, image_size, 3]), training=False, return_intermediates=True)
    return model
  model = dolg.DolgModel(
    use_multi_atrous=config.use_multi_atrous,
    atrous_dilations=config.atrous_dilations,
    local_dim=config.local_dim,
    **common,
  )
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
