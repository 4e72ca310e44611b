"""DOLG: deep orthogonal fusion of local and global features (Yang et al. 2021)."""

import tensorflow as tf

from dolg_tf.model import backbones, fusion, initializers, local_branch, normalization, pooling

# Keys of the intermediate tensors returned with `return_intermediates=True`.
INTERMEDIATES = (
  "f3",
  "f4",
  "f_g",
  "f_l",
  "attention",
  "f_l_orth",
  "f_o",
  "embedding",
  "descriptor",
)


class DolgModel(tf.keras.Model):
  """Images -> L2-normalised DOLG descriptors.

  backbone -> local branch (optional multi-atrous + self-attention) on stage 3;
  GeM + fc_t on stage 4 (f_g); orthogonal fusion [f_g, avgpool(f_l_orth)]; fc
  to `embedding_dim`; L2 normalisation. Accepts float32 RGB images in [0, 255]
  of any size and batch; the model normalises them itself.
  """

  def __init__(
    self,
    depth=50,
    layout="pycls",
    block3_strides=False,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    input_mean=(0.0, 0.0, 0.0),
    input_std=(1.0, 1.0, 1.0),
    input_channel_order="RGB",
    use_multi_atrous=False,
    atrous_dilations=(6, 12, 18),
    gem_p=3.0,
    gem_p_trainable=True,
    gem_eps=1e-6,
    local_dim=1024,
    embedding_dim=512,
    width_multiplier=1.0,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self._config = dict(
      depth=depth,
      layout=layout,
      block3_strides=block3_strides,
      bn_momentum=bn_momentum,
      bn_epsilon=bn_epsilon,
      input_mean=tuple(input_mean),
      input_std=tuple(input_std),
      input_channel_order=input_channel_order,
      use_multi_atrous=use_multi_atrous,
      atrous_dilations=tuple(atrous_dilations),
      gem_p=gem_p,
      gem_p_trainable=gem_p_trainable,
      gem_eps=gem_eps,
      local_dim=local_dim,
      embedding_dim=embedding_dim,
      width_multiplier=width_multiplier,
    )
    self.input_normalization = normalization.InputNormalization(
      input_mean, input_std, input_channel_order, name="input_normalization"
    )
    self.backbone = backbones.ResNetBackbone(
      depth, layout, block3_strides, bn_momentum, bn_epsilon, width_multiplier, name="backbone"
    )
    f3_channels = self.backbone.output_channels[0]
    # The official module maps the 1024-channel f3 back to 1024 channels through
    # 512-channel branches; narrower backbones keep the same ratios.
    self.multi_atrous = (
      local_branch.MultiAtrous(
        atrous_dilations,
        branch_channels=f3_channels // 2,
        output_channels=f3_channels,
        name="multi_atrous",
      )
      if use_multi_atrous
      else None
    )
    self.attention = local_branch.SpatialAttention2d(
      local_dim, bn_momentum, bn_epsilon, name="local_attention"
    )
    self.pool_g = pooling.GeMPooling(gem_p, gem_p_trainable, gem_eps, name="pool_g")
    self.fc_t = tf.keras.layers.Dense(
      local_dim, kernel_initializer=initializers.pytorch_default(), name="fc_t"
    )
    self.fusion = fusion.OrthogonalFusion(name="orthogonal_fusion")
    self.fc = tf.keras.layers.Dense(
      embedding_dim, kernel_initializer=initializers.pytorch_default(), name="fc", dtype="float32"
    )

  def call(self, images, training=None, return_intermediates=False):
    """Computes descriptors.

    Args:
      images: float [B, H, W, 3] RGB pixels in [0, 255].
      training: Keras training flag (BatchNorm statistics, head updates).
      return_intermediates: if True, return a dict with the tensors of
        `INTERMEDIATES` (feature maps are NHWC) instead of the descriptor.

    Returns:
      L2-normalised float32 descriptors [B, embedding_dim], or the dict.
    """
    f3, f4 = self.backbone(self.input_normalization(images), training=training)
    local_input = self.multi_atrous(f3) if self.multi_atrous is not None else f3
    f_l, attention = self.attention(local_input, training=training)
    f_g = tf.cast(self.fc_t(self.pool_g(f4)), tf.float32)
    f_o, f_l_orth = self.fusion(f_l, f_g, return_orthogonal=True)
    embedding = self.fc(f_o)
    descriptor = normalization.l2_normalize(embedding, axis=-1)
    if not return_intermediates:
      return descriptor
    values = dict(
      f3=f3,
      f4=f4,
      f_g=f_g,
      f_l=f_l,
      attention=attention,
      f_l_orth=f_l_orth,
      f_o=f_o,
      embedding=embedding,
      descriptor=descriptor,
    )
    return {k: tf.cast(values[k], tf.float32) for k in INTERMEDIATES}

  def get_config(self):
    return dict(self._config, name=self.name)

  @classmethod
  def from_config(cls, config):
    return cls(**config)
