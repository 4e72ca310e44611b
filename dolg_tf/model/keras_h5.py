"""Loads keras.applications ResNet ImageNet weights (`*_notop.h5`) into a backbone.

The 'keras' backbone layout uses the keras.applications layer names
(`conv1_conv`, `conv2_block1_0_conv`, ...), so weights are matched by layer
name and weight name (kernel, bias, gamma, beta, moving_mean,
moving_variance). keras.applications ResNets expect 'caffe' preprocessing
(BGR, mean [103.939, 116.779, 123.68], no std); `KERAS_IMAGENET_INPUT` gives
the matching ModelConfig input settings.
"""

import h5py
import numpy as np

from dolg_tf.keras_api import keras

# ModelConfig overrides that reproduce keras.applications.resnet.preprocess_input.
KERAS_IMAGENET_INPUT = dict(
  input_mean=(123.68, 116.779, 103.939), input_std=(1.0, 1.0, 1.0), input_channel_order="BGR"
)


def _decode(value):
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_h5_weights(path: str) -> dict:
  """{layer name: {weight name: array}} from a Keras .h5 weights file.

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
        weights[layer_name] = {n.split("/")[-1].split(":")[0]: np.asarray(group[n]) for n in names}
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
    if layer.name not in stored:
      raise ValueError(f"{path}: no weights for layer '{layer.name}'")
    values = stored[layer.name]
    for variable in layer.weights:
      key = variable.name.split("/")[-1].split(":")[0]
      if key not in values:
        raise ValueError(f"{path}: layer '{layer.name}' has no weight '{key}'")
      if tuple(values[key].shape) != tuple(variable.shape):
        raise ValueError(
          f"{path}: shape mismatch for '{layer.name}/{key}': file {values[key].shape}, "
          f"model {tuple(variable.shape)}"
        )
      variable.assign(values[key])
    loaded += 1
  return loaded
