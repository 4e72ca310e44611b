"""Loads keras.applications ImageNet weights (`*_notop.h5`) into a backbone.

`load_backbone_weights` takes either backbone: a ResNetBackbone ('keras' or
'delf' layout, below) or a keras_app_backbones.KerasAppBackbone
(`load_keras_app_weights`: EfficientNet, EfficientNetV2, ConvNeXt).

The 'keras' backbone layout uses the keras.applications layer names
(`conv1_conv`, `conv2_block1_0_conv`, ...), so weights are matched by layer
name and weight name (kernel, bias, gamma, beta, moving_mean,
moving_variance). keras.applications ResNets expect 'caffe' preprocessing
(BGR, mean [103.939, 116.779, 123.68], no std); `KERAS_IMAGENET_INPUT` gives
the matching ModelConfig input settings.
"""

import re

import h5py
import numpy as np

from dolg_tf.keras_api import keras

# ModelConfig overrides that reproduce keras.applications.resnet.preprocess_input.
KERAS_IMAGENET_INPUT = dict(
  input_mean=(123.68, 116.779, 103.939), input_std=(1.0, 1.0, 1.0), input_channel_order="BGR"
)


def _decode(value):
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _short_key(owner: str, name: str) -> str:
  """The weight name of a variable or .h5 weight name ('stem_conv/kernel:0' -> 'kernel')."""
  del owner
  return name.split("/")[-1].split(":")[0]


def _layer_weight_key(owner: str, name: str) -> str:
  """A weight's name within layer `owner`: 'kernel', or 'inner/kernel' in a nested model.

  ('stem_conv', 'stem_conv/kernel:0') -> 'kernel'; ('convnext_tiny_stem',
  'convnext_tiny_stem_conv/kernel:0') -> 'convnext_tiny_stem_conv/kernel'.
  """
  parts = name.split(":")[0].split("/")
  return parts[-1] if len(parts) < 2 or parts[-2] == owner else "/".join(parts[-2:])


def read_h5_weights(path: str, key=_short_key) -> dict:
  """{layer name: {key(layer name, weight name): array}} from a Keras .h5 weights file.

  Raises:
    IOError: naming the file if it cannot be read or is not a Keras weights file.
  """
  try:
    with h5py.File(path, "r") as f:
      root = f["model_weights"] if "model_weights" in f else f
      if "layer_names" not in root.attrs:
        raise OSError(f"{path}: not a Keras weights file (no 'layer_names' attribute)")
      weights = {}
      for layer_name in (_decode(n) for n in root.attrs["layer_names"]):
        group = root[layer_name]
        names = [_decode(n) for n in group.attrs.get("weight_names", [])]
        weights[layer_name] = {key(layer_name, n): np.asarray(group[n]) for n in names}
      return weights
  except OSError as e:
    if str(path) in str(e):
      raise
    raise OSError(f"{path}: cannot read Keras weights: {e}") from e


def load_backbone_weights(backbone: keras.layers.Layer, path: str) -> int:
  """Assigns the .h5 weights to `backbone`'s layers of the same names.

  Returns:
    The number of layers loaded.

  Raises:
    ValueError: if the backbone is not in the 'keras' or 'delf' layout, or a layer of the
      backbone is missing from the file, or a shape differs (naming it).
  """
  if hasattr(backbone, "network"):  # a keras_app_backbones.KerasAppBackbone
    return load_keras_app_weights(backbone, path)
  # The delf layout has keras.applications' layer names (DELF starts from these weights too).
  if getattr(backbone, "layout", "keras") not in ("keras", "delf"):
    raise ValueError(
      f"{path}: Keras ImageNet weights need backbone_layout 'keras' or 'delf', "
      f"got '{backbone.layout}'"
    )
  stored = read_h5_weights(path)
  loaded = 0
  for layer in backbone._flatten_layers(include_self=False, recursive=True):
    if not layer.weights or not isinstance(
      layer, keras.layers.Conv2D | keras.layers.BatchNormalization
    ):
      continue
    _assign_layer(layer, stored.get(layer.name), _short_key, path)
    loaded += 1
  return loaded


def load_keras_app_weights(backbone: keras.layers.Layer, path: str) -> int:
  """Assigns a keras.applications `*_notop.h5` file to a KerasAppBackbone, every weight checked.

  keras writes one group per layer of the application (a nested Sequential,
  as ConvNeXt's stem and downsampling blocks, is one group holding its
  layers' weights); each weight is matched by its layer and weight name
  ('block1a_dwconv/depthwise_kernel', 'convnext_tiny_stem_conv/kernel').
  File layers the backbone does not have (EfficientNet's input
  Normalization, whose statistics the model applies itself) are ignored.

  Returns:
    The number of backbone layers loaded (every layer that has weights).

  Raises:
    ValueError: a backbone layer or weight missing from the file, or a shape
      differs (naming the file, layer and weight).
  """
  stored = read_h5_weights(path, key=_layer_weight_key)
  loaded = 0
  for layer in backbone.network.layers:
    if not layer.weights:
      continue
    values = stored.get(_stored_name(layer.name, stored))
    if isinstance(layer, keras.layers.DepthwiseConv2D) and values and "kernel" in values:
      values = depthwise_values(values)
    _assign_layer(layer, values, _layer_weight_key, path)
    loaded += 1
  return loaded


def depthwise_values(values: dict) -> dict:
  """keras' grouped depthwise Conv2D weights as a DepthwiseConv2D's.

  ConvNeXt's files hold `kernel` [k, k, 1, C] (keras' Conv2D(groups=C)); the
  backbone's DepthwiseConv2D (keras_app_backbones.depthwise_convolutions)
  takes `depthwise_kernel` [k, k, C, 1]: output channel c filters input
  channel c with kernel[:, :, 0, c] in both.
  """
  values = dict(values)
  kernel = values.pop("kernel")
  values["depthwise_kernel"] = np.transpose(kernel, (0, 1, 3, 2))
  return values


def _stored_name(name: str, stored: dict) -> str | None:
  """The file's group for layer `name`: its own, or the one layer of the same auto-name.

  keras numbers the layers it names itself per process ('layer_normalization',
  'layer_normalization_1', ...; ConvNeXt's final LayerNormalization is one),
  so the file may hold such a layer under another number.
  """
  if name in stored:
    return name
  base = re.sub(r"_\d+$", "", name)
  candidates = [n for n in stored if re.fullmatch(rf"{re.escape(base)}(_\d+)?", n)]
  return candidates[0] if len(candidates) == 1 else None


def _assign_layer(layer, values: dict | None, key, path: str) -> None:
  """Assigns every weight of `layer` from `values[key(weight name)]`, shapes checked."""
  if values is None:
    raise ValueError(f"{path}: no weights for layer '{layer.name}'")
  for variable in layer.weights:
    name = key(layer.name, variable.name)
    if name not in values:
      raise ValueError(f"{path}: layer '{layer.name}' has no weight '{name}'")
    if tuple(values[name].shape) != tuple(variable.shape):
      raise ValueError(
        f"{path}: shape mismatch for '{layer.name}/{name}': file {values[name].shape}, "
        f"model {tuple(variable.shape)}"
      )
    variable.assign(values[name])
