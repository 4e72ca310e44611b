"""The bottleneck residual blocks of the three ResNet layouts (see backbones.py).

'pycls' (PyclsBottleneck): stride on the 3x3 conv, no conv biases, PyTorch's
symmetric padding, pycls names. 'keras' (KerasBottleneck): stride on the first
1x1 conv, conv biases, keras.applications names. 'delf' (DelfBottleneck): the
keras block with DELF's attribute names (`delf_block_name`,
DELF_BLOCK_LAYERS). Every block applies ReLU or SuperGlobal's ReLU-up
(`activation`) and uses FoldableBatchNorm.
"""

import tensorflow as tf

from dolg_tf.keras_api import keras
from dolg_tf.model.foldable_batch_norm import FoldableBatchNorm


def pycls_conv_init():
  """pycls' convolution initializer: normal(0, sqrt(2 / fan_out))."""
  return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def activation(floor: float = 0.0):
  """ReLU, or SuperGlobal's ReLU-up max(x, floor) for a positive floor."""
  if floor <= 0:
    return tf.nn.relu
  return lambda x: tf.maximum(x, tf.cast(floor, x.dtype))


class Bottleneck(keras.layers.Layer):
  """What the bottleneck layouts share: arguments, activations (ReLU or ReLU-up), config."""

  def __init__(
    self,
    width,
    out_channels,
    strides,
    use_projection,
    bn_momentum,
    bn_epsilon,
    inner_floor=0.0,
    output_floor=0.0,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.width = width
    self.out_channels = out_channels
    self.strides = strides
    self.use_projection = use_projection
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.inner_floor = float(inner_floor)
    self.output_floor = float(output_floor)
    self.inner_act = activation(self.inner_floor)
    self.output_act = activation(self.output_floor)

  def _bn(self, name):
    return FoldableBatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name)

  def conv_bn_pairs(self):
    """[(Conv2D, the FoldableBatchNorm after it)] of the block."""
    names = self.CONV_BN + ((self.PROJECTION,) if self.use_projection else ())
    return [(getattr(self, conv), getattr(self, bn)) for conv, bn in names]

  def get_config(self):
    config = super().get_config()
    config.update(
      width=self.width,
      out_channels=self.out_channels,
      strides=self.strides,
      use_projection=self.use_projection,
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      inner_floor=self.inner_floor,
      output_floor=self.output_floor,
    )
    return config


class PyclsBottleneck(Bottleneck):
  """Bottleneck residual block in the pycls/torchvision layout."""

  CONV_BN = (("a", "a_bn"), ("b", "b_bn"), ("c", "c_bn"))
  PROJECTION = ("proj", "bn")

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    conv = lambda filters, size, name, stride=1: keras.layers.Conv2D(
      filters,
      size,
      strides=stride,
      padding="valid",
      use_bias=False,
      kernel_initializer=pycls_conv_init(),
      name=name,
    )
    self.a = conv(self.width, 1, "a")
    self.a_bn = self._bn("a_bn")
    self.b_pad = keras.layers.ZeroPadding2D(1, name="b_pad")
    self.b = conv(self.width, 3, "b", stride=self.strides)
    self.b_bn = self._bn("b_bn")
    self.c = conv(self.out_channels, 1, "c")
    self.c_bn = self._bn("c_bn")
    if self.use_projection:
      self.proj = conv(self.out_channels, 1, "proj", stride=self.strides)
      self.bn = self._bn("bn")

  def call(self, x, training=None):
    shortcut = x
    if self.use_projection:
      shortcut = self.bn(self.proj(x), training=training)
    y = self.inner_act(self.a_bn(self.a(x), training=training))
    y = self.inner_act(self.b_bn(self.b(self.b_pad(y)), training=training))
    y = self.c_bn(self.c(y), training=training)
    return self.output_act(y + shortcut)


class _PrefixedBottleneck(Bottleneck):
  """keras.applications naming: the block is called `prefix`, its layers `{prefix}_{name}`."""

  def __init__(self, *args, prefix, **kwargs):
    super().__init__(*args, name=prefix, **kwargs)
    self.prefix = prefix

  def _bn(self, name):
    return super()._bn(f"{self.prefix}_{name}")

  def _conv(self, filters, size, name, stride=1, padding="valid"):
    return keras.layers.Conv2D(
      filters, size, strides=stride, padding=padding, name=f"{self.prefix}_{name}"
    )

  def get_config(self):
    config = super().get_config()
    config.pop("name", None)
    config.update(prefix=self.prefix)
    return config


class KerasBottleneck(_PrefixedBottleneck):
  """Bottleneck residual block in the keras.applications layout."""

  CONV_BN = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
  PROJECTION = ("conv0", "bn0")

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    if self.use_projection:
      self.conv0 = self._conv(self.out_channels, 1, "0_conv", stride=self.strides)
      self.bn0 = self._bn("0_bn")
    self.conv1 = self._conv(self.width, 1, "1_conv", stride=self.strides)
    self.bn1 = self._bn("1_bn")
    self.conv2 = self._conv(self.width, 3, "2_conv", padding="same")
    self.bn2 = self._bn("2_bn")
    self.conv3 = self._conv(self.out_channels, 1, "3_conv")
    self.bn3 = self._bn("3_bn")

  def call(self, x, training=None):
    shortcut = x
    if self.use_projection:
      shortcut = self.bn0(self.conv0(x), training=training)
    y = self.inner_act(self.bn1(self.conv1(x), training=training))
    y = self.inner_act(self.bn2(self.conv2(y), training=training))
    y = self.bn3(self.conv3(y), training=training)
    return self.output_act(y + shortcut)


class DelfBottleneck(_PrefixedBottleneck):
  """Bottleneck residual block of DELF's ResNet50 (its _ConvBlock / _IdentityBlock).

  Attributes follow DELF (`conv2a`, `bn2a`, ..., `conv_shortcut`,
  `bn_shortcut`); layer names follow keras.applications (`{prefix}_1_conv`,
  ..., `{prefix}_0_conv`), which have the same shapes.
  """

  CONV_BN = (("conv2a", "bn2a"), ("conv2b", "bn2b"), ("conv2c", "bn2c"))
  PROJECTION = ("conv_shortcut", "bn_shortcut")

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.conv2a = self._conv(self.width, 1, "1_conv", stride=self.strides)
    self.bn2a = self._bn("1_bn")
    self.conv2b = self._conv(self.width, 3, "2_conv", padding="same")
    self.bn2b = self._bn("2_bn")
    self.conv2c = self._conv(self.out_channels, 1, "3_conv")
    self.bn2c = self._bn("3_bn")
    if self.use_projection:
      self.conv_shortcut = self._conv(self.out_channels, 1, "0_conv", stride=self.strides)
      self.bn_shortcut = self._bn("0_bn")

  def call(self, x, training=None):
    y = self.inner_act(self.bn2a(self.conv2a(x), training=training))
    y = self.inner_act(self.bn2b(self.conv2b(y), training=training))
    y = self.bn2c(self.conv2c(y), training=training)
    shortcut = x
    if self.use_projection:
      shortcut = self.bn_shortcut(self.conv_shortcut(x), training=training)
    return self.output_act(y + shortcut)


def delf_block_name(stage_index: int, block_index: int) -> str:
  """DELF's attribute name of a block: stage_index 0..3 -> 'l2'..'l5', block 0 -> 'a'.

  DELF only has R50 (at most 6 blocks a stage); beyond 26 blocks (R152's stage
  3) the letter is followed by the index, e.g. 'l4z26'.
  """
  letter = chr(ord("a") + min(block_index, 25))
  suffix = str(block_index) if block_index >= 26 else ""
  return f"l{stage_index + 2}{letter}{suffix}"


# DELF sub-layer attribute names of a block, in order.
DELF_BLOCK_LAYERS = ("conv2a", "bn2a", "conv2b", "bn2b", "conv2c", "bn2c")
DELF_SHORTCUT_LAYERS = ("conv_shortcut", "bn_shortcut")
