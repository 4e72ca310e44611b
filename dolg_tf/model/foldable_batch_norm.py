"""A batch norm that can be folded into the convolution before it (inference only).

The ResNet backbones use FoldableBatchNorm after every convolution;
`fold_batch_norm` folds one pair (export.fold_batch_norms, through
backbones.ResNetBackbone.fold_batch_norms).
"""

import numpy as np
import tensorflow as tf

from dolg_tf.keras_api import keras

# tf.nn.fused_batch_norm (Keras's fused path) raises smaller epsilons to this.
_FUSED_MIN_EPSILON = 1.001e-5


class FoldableBatchNorm(keras.layers.BatchNormalization):
  """Keras BatchNormalization that can be folded into the convolution before it.

  Folded (`fold_batch_norm`, inference only), the convolution's kernel carries
  the scale gamma / sqrt(variance + epsilon), `beta` holds the shift and the
  layer only adds it. TF's CPU remapper fuses a float32 FusedBatchNorm into the
  convolution before it, but not a bfloat16 one; a BiasAdd it fuses in both.
  """

  def __init__(self, *args, folded=False, **kwargs):
    super().__init__(*args, **kwargs)
    self.folded = bool(folded)

  def call(self, inputs, training=None, mask=None):
    if not self.folded:
      return super().call(inputs, training=training, mask=mask)
    if training:
      raise ValueError(f"{self.name} is folded into its convolution: inference only")
    inputs = tf.cast(inputs, self.compute_dtype)
    return tf.nn.bias_add(inputs, tf.cast(self.beta, inputs.dtype))

  def get_config(self):
    config = super().get_config()
    config.update(folded=self.folded)
    return config


def fold_batch_norm(conv, bn, source_conv=None, source_bn=None):
  """Folds FoldableBatchNorm `bn` into Conv2D `conv` (in float64, then each variable's dtype).

  The weights are read from `source_conv`, `source_bn` (default `conv`, `bn`),
  e.g. the float32 model of a bfloat16 twin, so that bfloat16 rounds the folded
  kernel once.
  """
  source_conv = source_conv or conv
  source_bn = source_bn or bn
  gamma, beta, mean, variance = (
    np.asarray(v.numpy(), np.float64)
    for v in (source_bn.gamma, source_bn.beta, source_bn.moving_mean, source_bn.moving_variance)
  )
  epsilon = source_bn.epsilon
  if source_bn.fused:
    epsilon = max(epsilon, _FUSED_MIN_EPSILON)
  scale = gamma / np.sqrt(variance + epsilon)
  bias = np.asarray(source_conv.bias.numpy(), np.float64) if source_conv.use_bias else 0.0
  kernel = np.asarray(source_conv.kernel.numpy(), np.float64) * scale
  conv.kernel.assign(tf.cast(kernel, conv.kernel.dtype))
  if conv.use_bias:
    conv.bias.assign(tf.zeros_like(conv.bias))
  bn.beta.assign(tf.cast(beta + scale * (bias - mean), bn.beta.dtype))
  bn.folded = True
