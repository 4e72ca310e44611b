"""DOLG: deep orthogonal fusion of local and global features (Yang et al. 2021)."""

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.keras_api import keras
from dolg_tf.model import (
  base,
  fusion,
  initializers,
  local_branch,
  normalization,
  pooling,
  superglobal,
)

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


class DolgModel(base.RetrievalModel):
  """Images -> L2-normalised DOLG descriptors.

  backbone -> local branch (optional multi-atrous + self-attention) on stage 3;
  GeM + fc_t on stage 4 (f_g); orthogonal fusion [f_g, avgpool(f_l_orth)]; fc
  to `embedding_dim`; L2 normalisation. Accepts float32 RGB images in [0, 255]
  of any size and batch; the model normalises them itself.
  """

  def __init__(self, config: config_lib.ModelConfig, **kwargs):
    super().__init__(config, **kwargs)
    f3_channels = self.backbone.output_channels[0]
    # The official module maps the 1024-channel f3 back to 1024 channels through
    # 512-channel branches; narrower backbones keep the same ratios.
    self.multi_atrous = (
      local_branch.MultiAtrous(
        config.atrous_dilations,
        branch_channels=f3_channels // 2,
        output_channels=f3_channels,
        name="multi_atrous",
      )
      if config.use_multi_atrous
      else None
    )
    self.attention = local_branch.SpatialAttention2d(
      config.local_dim,
      config.resolved_bn_momentum,
      config.resolved_bn_epsilon,
      name="local_attention",
    )
    self.pool_g = pooling.GeMPooling(
      config.gem_p, config.gem_p_trainable, config.gem_eps, name="pool_g"
    )
    self.fc_t = keras.layers.Dense(
      config.local_dim, kernel_initializer=initializers.pytorch_default(), name="fc_t"
    )
    self.fusion = fusion.OrthogonalFusion(name="orthogonal_fusion")
    self.fc = keras.layers.Dense(
      config.embedding_dim,
      kernel_initializer=initializers.pytorch_default(),
      name="fc",
      dtype="float32",
    )

  def call(self, images, training=None, return_intermediates=False, test_time=None):
    """Computes descriptors.

    Args:
      images: float [B, H, W, 3] RGB pixels in [0, 255].
      training: Keras training flag (BatchNorm statistics, head updates).
      return_intermediates: if True, return a dict with the tensors of
        `INTERMEDIATES` (feature maps are NHWC) instead of the descriptor.
      test_time: optional superglobal.TestTimeOptions (GeM+, Regional-GeM).

    Returns:
      L2-normalised float32 descriptors [B, embedding_dim], or the dict.
    """
    f3, f4 = self.features(images, training=training)
    local_input = self.multi_atrous(f3) if self.multi_atrous is not None else f3
    f_l, attention = self.attention(local_input, training=training)
    f4 = superglobal.apply_regional_gem(f4, test_time)
    f_g = tf.cast(self.fc_t(self.pool_g(f4, p=superglobal.gem_plus_p(test_time))), tf.float32)
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
