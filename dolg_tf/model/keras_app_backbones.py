"""keras.applications EfficientNet, EfficientNetV2 and ConvNeXt as DOLG / DELG backbones.

`KerasAppBackbone(name)` builds the application without its top (weights=None,
input [None, None, 3]) and returns, like backbones.ResNetBackbone, the
stride-16 map (the output of the stage before the last downsampling: where
ResNet's block3 is; the local branch) and the stride-32 map (the last stage;
the global branch):

- efficientnet_b0..b7: f3 = the output of stage 5 (`block5?_add`, the input of
  `block6a_expand_conv`), f4 = `top_activation` (after the 1x1 top conv).
- efficientnetv2_s/m/l: the same names (stage 5 -> `block6a_expand_conv`,
  f4 = `top_activation`).
- convnext_tiny..large: f3 = the output of stage 2 (the input of
  `<model>_downsampling_block_2`), f4 = the model's output: stage 3 and the
  LayerNormalization keras puts after it without the top (its `*_notop.h5`
  carries that norm's weights). Its 7x7 depthwise convolutions, grouped
  Conv2D layers in keras, are DepthwiseConv2D layers here (14x faster on a
  CPU, the same outputs; `depthwise_convolutions`).

The application's own preprocessing layers are left out (EfficientNet's
Rescaling + Normalization; include_preprocessing=False for V2 and ConvNeXt):
the model's InputNormalization applies `INPUT_NORMALIZATION[family]` to its
float RGB [0, 255] input, which is what the ImageNet weights expect (V1 and
ConvNeXt: the ImageNet mean/std, (x - 255 * mean) / (255 * std); V2 S/M/L:
x / 128 - 1). Layer names are keras.applications' own, so the `*_notop.h5`
files keras downloads load by name (keras_h5.load_keras_app_weights).

Batch-norm folding is a documented no-op here (see `fold_batch_norms`).
"""

import tensorflow as tf
from absl import logging

from dolg_tf.config_sections import DELG_MEAN_RGB, DELG_STD_RGB, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from dolg_tf.keras_api import keras

# backbone name -> (keras.applications builder, family).
BUILDERS = {
  **{f"efficientnet_b{i}": (f"EfficientNetB{i}", "efficientnet") for i in range(8)},
  **{f"efficientnetv2_{s}": (f"EfficientNetV2{s.upper()}", "efficientnetv2") for s in "sml"},
  **{
    f"convnext_{s}": (f"ConvNeXt{s.capitalize()}", "convnext")
    for s in ("tiny", "small", "base", "large")
  },
}
# The preprocessing of each family's ImageNet weights as (mean, std) of RGB pixels in [0, 255].
INPUT_NORMALIZATION = {
  "efficientnet": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
  "efficientnetv2": (DELG_MEAN_RGB, DELG_STD_RGB),
  "convnext": (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
}


def family(name: str) -> str:
  """'efficientnet', 'efficientnetv2' or 'convnext' of a backbone name."""
  if name not in BUILDERS:
    raise ValueError(f"unknown keras.applications backbone {name!r}; one of {list(BUILDERS)}")
  return BUILDERS[name][1]


def build_application(name: str) -> keras.Model:
  """The keras.applications network `name` without its top (weights=None, any input size).

  ConvNeXt's depthwise convolutions are DepthwiseConv2D layers here (see
  `depthwise_convolutions`); everything else is keras' network as it builds it.
  """
  builder_name, app_family = BUILDERS[name]
  kwargs = {} if app_family == "efficientnet" else {"include_preprocessing": False}
  build = getattr(keras.applications, builder_name)
  application = build(include_top=False, weights=None, input_shape=(None, None, 3), **kwargs)
  if app_family == "convnext":
    application = depthwise_convolutions(application)
  return application


def is_grouped_depthwise(layer) -> bool:
  """Whether `layer` is a Conv2D with one group per input and output channel (a depthwise one)."""
  return type(layer) is keras.layers.Conv2D and layer.groups > 1 and layer.groups == layer.filters


def _depthwise_clone(layer):
  """clone_model's clone_function: a grouped depthwise Conv2D as a DepthwiseConv2D, same name."""
  config = layer.get_config()
  if not is_grouped_depthwise(layer):
    return layer.__class__.from_config(config)
  return keras.layers.DepthwiseConv2D(
    config["kernel_size"],
    strides=config["strides"],
    padding=config["padding"],
    dilation_rate=config["dilation_rate"],
    use_bias=config["use_bias"],
    name=config["name"],
  )


def depthwise_convolutions(application: keras.Model) -> keras.Model:
  """`application` (new weights) with every grouped depthwise Conv2D as a DepthwiseConv2D.

  keras builds ConvNeXt's 7x7 depthwise convolutions as `Conv2D(groups=
  channels)`; TensorFlow's CPU kernel for grouped convolutions is about 14x
  slower than its depthwise one (ConvNeXt-T at 224 px: 4.1 s vs 0.29 s per
  image here), with the same outputs. The layers keep their names; the
  weight is keras' kernel [k, k, 1, C] as the depthwise kernel [k, k, C, 1]
  (keras_h5 transposes it when loading keras' files).
  """
  return keras.models.clone_model(application, clone_function=_depthwise_clone)


def feature_tensors(application: keras.Model, name: str):
  """(input, stride-16 output, stride-32 output) symbolic tensors of `application`."""
  app_family = family(name)
  if app_family == "convnext":
    prefix = application.name
    f3 = _graph_input(application.get_layer(f"{prefix}_downsampling_block_2"))
    return application.input, f3, application.output
  f3 = _graph_input(application.get_layer("block6a_expand_conv"))
  f4 = application.get_layer("top_activation").output
  # EfficientNet (V1) always has Rescaling + Normalization: start after them.
  if app_family == "efficientnet":
    return _graph_input(application.get_layer("stem_conv_pad")), f3, f4
  return application.input, f3, f4


def _graph_input(layer):
  """The tensor `layer` is called on in its (single-use) functional graph.

  Not `layer.input`: for a nested Sequential (ConvNeXt's downsampling blocks)
  that is the Sequential's own input placeholder.
  """
  return tf.nest.flatten(layer._inbound_nodes[0].keras_inputs)[0]  # noqa: SLF001


class KerasAppBackbone(keras.layers.Layer):
  """A keras.applications network returning (stride-16, stride-32) feature maps.

  Input: normalised float images [B, H, W, 3] (INPUT_NORMALIZATION of the
  family) of any size >= 32. Output: f3 [B, ~H/16, ~W/16, C3] and f4
  [B, ~H/32, ~W/32, C4] (exactly H/16, H/32 for multiples of 32; with
  `block3_strides` f3 is max-pooled 1x1/2 to stride 32, as DELF's R50).
  """

  def __init__(self, backbone="efficientnet_b0", block3_strides=False, **kwargs):
    super().__init__(**kwargs)
    self.backbone = backbone
    self.family = family(backbone)
    self.block3_strides = bool(block3_strides)
    application = build_application(backbone)
    inputs, f3, f4 = feature_tensors(application, backbone)
    self.network = keras.Model(inputs, [f3, f4], name=application.name)
    self.output_channels = (int(f3.shape[-1]), int(f4.shape[-1]))
    self.stage3_receptive_field = receptive_field(application, f3)
    if self.block3_strides:
      self.block3_subsample = keras.layers.MaxPooling2D(1, strides=2, name="block3_subsample")

  def call(self, images, training=None):
    f3, f4 = self.network(images, training=training)
    if self.block3_strides:
      f3 = self.block3_subsample(f3)
    return f3, f4

  def conv_bn_pairs(self):
    """None: keras.applications' batch norms are plain Keras layers (see fold_batch_norms)."""
    return []

  def fold_batch_norms(self, source=None):
    """A no-op: these backbones serve their batch norms (or LayerNorms) unfolded.

    ConvNeXt has LayerNorms, which do not fold into a convolution. EfficientNet
    and V2 have keras' own BatchNormalization layers (after their 1x1 and
    depthwise convolutions), not the FoldableBatchNorm the ResNets fold; TF's
    CPU remapper still fuses a float32 convolution with the batch norm after
    it, so only a bfloat16 export loses the ~1.1x of folding.
    """
    del source
    logging.info("%s: no batch norms to fold (docs/BACKBONES.md); served as trained", self.backbone)

  def receptive_field(self):
    """(size, stride, padding) of a stride-16 (f3) feature in input pixels (see receptive_field)."""
    size, stride = self.stage3_receptive_field
    if self.block3_strides:
      stride *= 2
    return size, stride, (size - 1) // 2

  def get_config(self):
    config = super().get_config()
    config.update(backbone=self.backbone, block3_strides=self.block3_strides)
    return config


_POOLS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
_GLOBAL = (
  keras.layers.GlobalAveragePooling2D,
  keras.layers.GlobalMaxPooling2D,
  keras.layers.GlobalAveragePooling1D,
)


def _through(layer, field):
  """(size, jump) of `layer`'s output from its input's `field` (None: global context)."""
  if field is None or isinstance(layer, _GLOBAL):
    return None
  if isinstance(layer, keras.Sequential):
    for inner in layer.layers:
      field = _through(inner, field)
    return field
  size, jump = field
  if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
    kernel, stride, dilation = layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0]
  elif isinstance(layer, _POOLS):
    kernel, stride, dilation = layer.pool_size[0], layer.strides[0], 1
  else:
    return field  # pointwise (norms, activations, dense, padding, scale) or element-wise
  return size + dilation * (kernel - 1) * jump, jump * stride


def receptive_field(model: keras.Model, output) -> tuple[int, int]:
  """(size, stride) of one feature of `output`, a symbolic tensor of functional `model`.

  The theoretical receptive field of the convolutions and pools (square
  kernels): each layer grows the side by dilation * (kernel - 1) * jump and
  multiplies the jump by its stride; a merge takes the largest input.
  Branches through a global pooling (EfficientNet's squeeze-and-excitation
  gates) carry whole-image context, not a receptive field, and are left out:
  the size is that of the convolution paths. On keras.applications' ResNet50
  it gives DELF's (291, 16) for conv4_block6_out.
  """
  fields = {}
  for layer in model.layers:
    node = layer._inbound_nodes[0]  # noqa: SLF001 (each layer is called once in the graph)
    inputs = tf.nest.flatten(node.keras_inputs)
    if not inputs:
      field = (1, 1)
    else:
      known = [fields.get(id(t), (1, 1)) for t in inputs]
      known = [f for f in known if f is not None]
      field = (max(f[0] for f in known), max(f[1] for f in known)) if known else None
      field = _through(layer, field)
    for tensor in tf.nest.flatten(node.outputs):
      fields[id(tensor)] = field
  result = fields[id(output)]
  if result is None:
    raise ValueError(f"{model.name}: {output.name} has no spatial receptive field")
  return result
