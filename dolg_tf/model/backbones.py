"""ResNet backbones returning the stage-3 and stage-4 feature maps.

Three layouts of the bottleneck ResNet are supported:

- 'pycls': the torchvision / pycls ("ResNet v1.5") layout of the official DOLG
  code: the stride-2 sits on the 3x3 conv, convolutions have no bias, and
  stride-2 layers pad symmetrically like PyTorch (explicit ZeroPadding2D +
  'valid'), so even-sized inputs give the same numbers as PyTorch. Sub-layer
  names follow pycls (`stem`, `s1..s4`, `b1..`, `a/b/c`, `a_bn/b_bn/c_bn`,
  `proj/bn`) so checkpoint import is a renaming.
- 'keras': the keras.applications ResNet50/101/152 layout (stride on the first
  1x1 conv, conv biases, a projection shortcut on every stage's first block),
  with the keras.applications layer names so `*_notop.h5` weights load by name.
- 'delf': exactly the ResNet50 of the DELF/DELG code base
  (tensorflow/models research/delf, training/model/resnet50.py): the keras
  block (stride on the first 1x1 conv, conv biases, projection shortcut on each
  stage's first block) with a 7x7/2 stem conv padded 'same' (TF's asymmetric
  padding), an unpadded 'valid' 3x3/2 max-pool, Keras-default BatchNorm
  (epsilon 1e-3, momentum 0.99) and, with `block3_strides`, DELF's 1x1/2
  max-pool subsampling of the stage-3 output (stage 4 then has stride 1).
  Python attributes carry DELF's names (`stem_conv`/`stem_bn` = DELF
  `conv1`/`bn_conv1`; block `l{stage}{letter}` with `conv2a`/`bn2a`,
  `conv2b`/`bn2b`, `conv2c`/`bn2c`, `conv_shortcut`/`bn_shortcut`), see
  `ResNetBackbone.delf_layers`; the Keras layer names are keras.applications' (as the
  'keras' layout), so the same `*_notop.h5` weights match by layer name.
"""

import numpy as np
import tensorflow as tf

from dolg_tf.keras_api import keras

# Depth 26 (two blocks per stage) is for tests, demos and quick experiments.
STAGE_BLOCKS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x.
LAYOUTS = ("pycls", "keras", "delf")


def _pycls_conv_init():
  # pycls: normal(0, sqrt(2 / fan_out)).
  return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def activation(floor: float = 0.0):
  """ReLU, or SuperGlobal's ReLU-up max(x, floor) for a positive floor."""
  if floor <= 0:
    return tf.nn.relu
  return lambda x: tf.maximum(x, tf.cast(floor, x.dtype))


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


class _Bottleneck(keras.layers.Layer):
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


class PyclsBottleneck(_Bottleneck):
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
      kernel_initializer=_pycls_conv_init(),
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


class _PrefixedBottleneck(_Bottleneck):
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


class ResNetBackbone(keras.layers.Layer):
  """Bottleneck ResNet returning (stage-3, stage-4) feature maps.

  Input: normalised float images [B, H, W, 3] of any size. Output: f3
  [B, ceil(H/16), ceil(W/16), 1024] and f4 [B, ceil(H/32), ceil(W/32), 2048]
  (with `block3_strides`, f3 is also at stride 32). `width_multiplier` scales
  every width (stem and stages; 1.0 is the standard network).
  """

  def __init__(
    self,
    depth=50,
    layout="pycls",
    block3_strides=False,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    width_multiplier=1.0,
    relu_up=0.0,
    **kwargs,
  ):
    super().__init__(**kwargs)
    if depth not in STAGE_BLOCKS:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
    if layout not in LAYOUTS:
      raise ValueError(f"ResNet layout must be one of {LAYOUTS}, got {layout!r}")
    self.depth = depth
    self.layout = layout
    self.block3_strides = block3_strides
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.width_multiplier = float(width_multiplier)
    if self.width_multiplier <= 0:
      raise ValueError(f"ResNet width_multiplier must be positive, got {width_multiplier}")
    self.relu_up = float(relu_up)
    if self.relu_up < 0:
      raise ValueError(f"ResNet relu_up must be >= 0, got {relu_up}")
    stem_width = max(1, round(64 * self.width_multiplier))
    widths = [max(1, round(w * self.width_multiplier)) for w in STAGE_WIDTHS]
    # Channels of the stage-3 (f3) and stage-4 (f4) outputs.
    self.output_channels = (4 * widths[2], 4 * widths[3])
    bn_args = dict(momentum=bn_momentum, epsilon=bn_epsilon)
    if layout == "pycls":
      self.stem_pad = keras.layers.ZeroPadding2D(3, name="stem_pad")
      self.stem_conv = keras.layers.Conv2D(
        stem_width,
        7,
        strides=2,
        padding="valid",
        use_bias=False,
        kernel_initializer=_pycls_conv_init(),
        name="stem_conv",
      )
      self.stem_bn = FoldableBatchNorm(name="stem_bn", **bn_args)
    elif layout == "delf":
      # DELF: Conv2D(64, 7, strides 2, padding 'same') with bias, then a valid max-pool.
      self.stem_pad = None
      self.stem_conv = keras.layers.Conv2D(
        stem_width, 7, strides=2, padding="same", name="conv1_conv"
      )
      self.stem_bn = FoldableBatchNorm(name="conv1_bn", **bn_args)
    else:
      self.stem_pad = keras.layers.ZeroPadding2D(3, name="conv1_pad")
      self.stem_conv = keras.layers.Conv2D(
        stem_width, 7, strides=2, padding="valid", name="conv1_conv"
      )
      self.stem_bn = FoldableBatchNorm(name="conv1_bn", **bn_args)
    # Zero padding before the max-pool equals PyTorch's -inf padding: its input is post-ReLU.
    # DELF pools without padding.
    self.pool_pad = None if layout == "delf" else keras.layers.ZeroPadding2D(1, name="pool_pad")
    self.pool = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="pool")
    self.stages = []
    in_channels = stem_width
    for stage_index, (num_blocks, width) in enumerate(zip(STAGE_BLOCKS[depth], widths)):
      stage_strides = 1 if stage_index == 0 else 2
      if stage_index == 3 and block3_strides:
        stage_strides = 1
      out_channels = 4 * width
      # ReLU-up as SuperGlobal's code applies it: the outputs of the blocks of stages
      # 1-3 and the inner activations of stage 1 (the stem and stage 4 keep ReLU).
      floors = dict(
        inner_floor=self.relu_up if stage_index == 0 else 0.0,
        output_floor=self.relu_up if stage_index < 3 else 0.0,
      )
      blocks = []
      for block_index in range(num_blocks):
        strides = stage_strides if block_index == 0 else 1
        if layout == "pycls":
          use_projection = block_index == 0 and (strides != 1 or in_channels != out_channels)
          blocks.append(
            PyclsBottleneck(
              width,
              out_channels,
              strides,
              use_projection,
              bn_momentum,
              bn_epsilon,
              name=f"s{stage_index + 1}_b{block_index + 1}",
              **floors,
            )
          )
        elif layout == "delf":
          blocks.append(
            DelfBottleneck(
              width,
              out_channels,
              strides,
              block_index == 0,
              bn_momentum,
              bn_epsilon,
              prefix=f"conv{stage_index + 2}_block{block_index + 1}",
              **floors,
            )
          )
        else:
          blocks.append(
            KerasBottleneck(
              width,
              out_channels,
              strides,
              block_index == 0,
              bn_momentum,
              bn_epsilon,
              prefix=f"conv{stage_index + 2}_block{block_index + 1}",
              **floors,
            )
          )
        in_channels = out_channels
      self.stages.append(blocks)
    if block3_strides:
      self.block3_subsample = keras.layers.MaxPooling2D(1, strides=2, name="block3_subsample")

  def call(self, images, training=None):
    x = images if self.stem_pad is None else self.stem_pad(images)
    x = tf.nn.relu(self.stem_bn(self.stem_conv(x), training=training))
    if self.pool_pad is not None:
      x = self.pool_pad(x)
    else:
      x = _pad_to_at_least(x, 3)
    x = self.pool(x)
    outputs = []
    for stage_index, blocks in enumerate(self.stages):
      for block in blocks:
        x = block(x, training=training)
      if stage_index == 2 and self.block3_strides:
        x = self.block3_subsample(x)
      outputs.append(x)
    return outputs[2], outputs[3]

  def conv_bn_pairs(self):
    """[(Conv2D, the FoldableBatchNorm after it)] of the whole backbone, stem first."""
    pairs = [(self.stem_conv, self.stem_bn)]
    for blocks in self.stages:
      for block in blocks:
        pairs.extend(block.conv_bn_pairs())
    return pairs

  def fold_batch_norms(self, source=None):
    """Folds every batch norm into its convolution (`fold_batch_norm`): an inference-only model.

    Args:
      source: the backbone of the same network to read the weights from
        (default this one), e.g. the float32 model of a bfloat16 twin.
    """
    pairs = self.conv_bn_pairs()
    source_pairs = (source or self).conv_bn_pairs()
    for (conv, bn), (source_conv, source_bn) in zip(pairs, source_pairs, strict=True):
      fold_batch_norm(conv, bn, source_conv, source_bn)

  def delf_layers(self) -> dict:
    """{DELF attribute path under `backbone`: layer} of the 'delf' layout.

    E.g. 'conv1', 'bn_conv1', 'l2a/conv2a', 'l2a/bn_shortcut', 'l5c/bn2c': the
    names of DELF's ResNet50 attributes, which are its checkpoint keys.
    """
    if self.layout != "delf":
      raise ValueError(f"DELF layer names need layout 'delf', got {self.layout!r}")
    layers = {"conv1": self.stem_conv, "bn_conv1": self.stem_bn}
    for stage_index, blocks in enumerate(self.stages):
      for block_index, block in enumerate(blocks):
        name = delf_block_name(stage_index, block_index)
        sublayers = DELF_BLOCK_LAYERS + (DELF_SHORTCUT_LAYERS if block.use_projection else ())
        for attribute in sublayers:
          layers[f"{name}/{attribute}"] = getattr(block, attribute)
    return layers

  def get_config(self):
    config = super().get_config()
    config.update(
      depth=self.depth,
      layout=self.layout,
      block3_strides=self.block3_strides,
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      width_multiplier=self.width_multiplier,
      relu_up=self.relu_up,
    )
    return config


def _pad_to_at_least(x, size):
  """Zero-pads the bottom/right of [B, H, W, C] up to `size` x `size` (no-op when larger).

  DELF's unpadded 3x3 max-pool is undefined on maps under 3 x 3 (inputs under
  5 px; TF errors, or the CPU kernel dies with SIGFPE): this gives such tiny
  inputs an output and leaves every other input exactly as DELF. The input is
  post-ReLU, so zeros never win the max over real values.
  """
  if x.shape[1] is not None and x.shape[2] is not None and min(x.shape[1], x.shape[2]) >= size:
    return x
  shape = tf.shape(x)
  pad_h = tf.maximum(size - shape[1], 0)
  pad_w = tf.maximum(size - shape[2], 0)
  return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])


def stage3_receptive_field(depth=50, layout="pycls", block3_strides=False):
  """(size, stride, padding) of one stage-3 feature in input pixels.

  Feature (i, j) sees the box centred on (i * stride, j * stride) with side
  `size`; padding = (size - 1) / 2 (DELF's CalculateReceptiveBoxes
  convention). The keras and delf layouts (same strides and kernels; DELF's
  'same'/'valid' padding moves the box by at most a pixel, not its size) give
  for R50 DELF's constants (291, 16, 145), and (291, 32, 145) with
  `block3_strides` (export_model_utils: stride 16 * stride_factor); R101 gives
  (835, 16, 417). The pycls layout puts the stride on the 3x3 conv and sees
  less (267 for R50).
  """
  size, jump = 7 + 2 * 2, 4  # 7x7/2 stem, then the 3x3/2 max-pool.
  for stage_index, num_blocks in enumerate(STAGE_BLOCKS[depth][:3]):
    stride = 1 if stage_index == 0 else 2
    for block_index in range(num_blocks):
      if block_index == 0 and layout in ("keras", "delf"):
        jump *= stride  # the stride sits on the 1x1 before the 3x3
      size += 2 * jump
      if block_index == 0 and layout == "pycls":
        jump *= stride
  if block3_strides:
    jump *= 2
  return size, jump, (size - 1) // 2
