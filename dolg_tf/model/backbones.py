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

import tensorflow as tf

from dolg_tf.keras_api import keras
from dolg_tf.model import bottlenecks
from dolg_tf.model.foldable_batch_norm import FoldableBatchNorm, fold_batch_norm

# Depth 26 (two blocks per stage) is for tests, demos and quick experiments.
STAGE_BLOCKS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x.
LAYOUTS = ("pycls", "keras", "delf")


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
    self._build_stem(stem_width)
    # Zero padding before the max-pool equals PyTorch's -inf padding: its input is post-ReLU.
    # DELF pools without padding.
    self.pool_pad = None if layout == "delf" else keras.layers.ZeroPadding2D(1, name="pool_pad")
    self.pool = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="pool")
    self.stages = self._build_stages(stem_width, widths)
    if block3_strides:
      self.block3_subsample = keras.layers.MaxPooling2D(1, strides=2, name="block3_subsample")

  def _build_stem(self, stem_width: int) -> None:
    """The 7x7/2 stem convolution (with its padding) and batch norm of the layout."""
    bn_args = dict(momentum=self.bn_momentum, epsilon=self.bn_epsilon)
    if self.layout == "pycls":
      self.stem_pad = keras.layers.ZeroPadding2D(3, name="stem_pad")
      self.stem_conv = keras.layers.Conv2D(
        stem_width,
        7,
        strides=2,
        padding="valid",
        use_bias=False,
        kernel_initializer=bottlenecks.pycls_conv_init(),
        name="stem_conv",
      )
      self.stem_bn = FoldableBatchNorm(name="stem_bn", **bn_args)
    elif self.layout == "delf":
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

  def _build_stages(self, stem_width: int, widths: list[int]) -> list[list[bottlenecks.Bottleneck]]:
    """The bottleneck blocks of the four stages."""
    stages = []
    in_channels = stem_width
    for stage_index, (num_blocks, width) in enumerate(zip(STAGE_BLOCKS[self.depth], widths)):
      stage_strides = 1 if stage_index == 0 else 2
      if stage_index == 3 and self.block3_strides:
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
        blocks.append(
          self._make_block(
            stage_index, block_index, width, out_channels, strides, in_channels, floors
          )
        )
        in_channels = out_channels
      stages.append(blocks)
    return stages

  def _make_block(
    self,
    stage_index: int,
    block_index: int,
    width: int,
    out_channels: int,
    strides: int,
    in_channels: int,
    floors: dict,
  ) -> bottlenecks.Bottleneck:
    """One bottleneck block of the layout, named as the layout's checkpoints name it."""
    bn = (self.bn_momentum, self.bn_epsilon)
    if self.layout == "pycls":
      use_projection = block_index == 0 and (strides != 1 or in_channels != out_channels)
      return bottlenecks.PyclsBottleneck(
        width,
        out_channels,
        strides,
        use_projection,
        *bn,
        name=f"s{stage_index + 1}_b{block_index + 1}",
        **floors,
      )
    block_class = (
      bottlenecks.DelfBottleneck if self.layout == "delf" else bottlenecks.KerasBottleneck
    )
    return block_class(
      width,
      out_channels,
      strides,
      block_index == 0,
      *bn,
      prefix=f"conv{stage_index + 2}_block{block_index + 1}",
      **floors,
    )

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
        name = bottlenecks.delf_block_name(stage_index, block_index)
        sublayers = bottlenecks.DELF_BLOCK_LAYERS + (
          bottlenecks.DELF_SHORTCUT_LAYERS if block.use_projection else ()
        )
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
