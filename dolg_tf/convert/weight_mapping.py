"""PyTorch tensors <-> Keras variables: layout transforms and checked assignment.

An `Entry` pairs a state-dict key with the variable it fills and the layout
change between them (conv kernels OIHW <-> HWIO, Linear weights transposed,
scalars [1] <-> []). `assign` checks every key and shape before assigning
anything, so a checkpoint that does not fit leaves the model unchanged.
pycls ResNet blocks and torchvision ResNet blocks share `backbone_entries`.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from dolg_tf.keras_api import keras

# PyTorch BatchNorm tensor -> Keras BatchNormalization variable.
_BN_FIELDS = (
  ("weight", "gamma"),
  ("bias", "beta"),
  ("running_mean", "moving_mean"),
  ("running_var", "moving_variance"),
)
PYCLS_BLOCK_LAYERS = ("a", "a_bn", "b", "b_bn", "c", "c_bn", "proj", "bn")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One PyTorch tensor and the TF variable it maps to."""

  key: str
  variable: tf.Variable
  kind: str  # 'conv' (OIHW <-> HWIO), 'dense' (transposed), 'same', 'scalar' ([1] <-> []).

  @property
  def torch_shape(self) -> tuple:
    shape = tuple(self.variable.shape)
    if self.kind == "conv":
      return (shape[3], shape[2], shape[0], shape[1])
    if self.kind == "dense":
      return shape[::-1]
    if self.kind == "scalar":
      return (1,)
    return shape

  def to_tf(self, value: np.ndarray) -> np.ndarray:
    if self.kind == "conv":
      return np.transpose(value, (2, 3, 1, 0))
    if self.kind == "dense":
      return np.transpose(value)
    if self.kind == "scalar":
      return value.reshape(())
    return value

  def to_torch(self) -> np.ndarray:
    value = self.variable.numpy()
    if self.kind == "conv":
      return np.transpose(value, (3, 2, 0, 1))
    if self.kind == "dense":
      return np.transpose(value)
    if self.kind == "scalar":
      return value.reshape((1,))
    return value


@dataclasses.dataclass
class ImportReport:
  """What an import consumed.

  Attributes:
    loaded: number of tensors / variables assigned.
    unused: checkpoint keys that were not used (sorted).
    ignored: number of entries skipped on purpose (PyTorch BatchNorm
      `num_batches_tracked` counters, DELF's optimizer and bookkeeping entries).
  """

  loaded: int
  unused: list[str]
  ignored: int

  def summary(self) -> str:
    unused = ", ".join(self.unused) if self.unused else "none"
    return (
      f"loaded {self.loaded} variables; unused: {unused}; "
      f"ignored {self.ignored} counter/optimizer/bookkeeping entries"
    )


def conv_entries(layer, key: str) -> list[Entry]:
  entries = [Entry(f"{key}.weight", layer.kernel, "conv")]
  if layer.use_bias:
    entries.append(Entry(f"{key}.bias", layer.bias, "same"))
  return entries


def bn_entries(layer, key: str) -> list[Entry]:
  return [Entry(f"{key}.{t}", getattr(layer, k), "same") for t, k in _BN_FIELDS]


def backbone_entries(backbone, stem_names, block_name) -> list[Entry]:
  if backbone.layout != "pycls":
    raise ValueError(
      f"PyTorch ResNet weights need backbone_layout='pycls', got '{backbone.layout}'"
    )
  entries = conv_entries(backbone.stem_conv, stem_names[0])
  entries += bn_entries(backbone.stem_bn, stem_names[1])
  for stage_index, blocks in enumerate(backbone.stages):
    for block_index, block in enumerate(blocks):
      for name in PYCLS_BLOCK_LAYERS:
        if name in ("proj", "bn") and not block.use_projection:
          continue
        layer = getattr(block, name)
        key = block_name(stage_index + 1, block_index + 1, name)
        if isinstance(layer, keras.layers.BatchNormalization):
          entries += bn_entries(layer, key)
        else:
          entries += conv_entries(layer, key)
  return entries


def pycls_block_name(stage: int, block: int, layer: str) -> str:
  inner = "" if layer in ("proj", "bn") else "f."
  return f"globalmodel.s{stage}.b{block}.{inner}{layer}"


def ensure_built(model, image_size: int = 64) -> None:
  if not model.built:
    model(tf.zeros([1, image_size, image_size, 3]), training=False)


def assign(
  entries: Sequence[Entry],
  state: Mapping[str, np.ndarray],
  network_prefixes: Sequence[str],
  source: str,
) -> ImportReport:
  """Checks every key and shape first, then assigns (nothing is assigned on error)."""
  values = []
  for entry in entries:
    if entry.key not in state:
      raise ValueError(f"{source}: missing key '{entry.key}' (expected shape {entry.torch_shape})")
    value = np.asarray(state[entry.key])
    shape = tuple(value.shape)
    if shape != entry.torch_shape and not (entry.kind == "scalar" and value.size == 1):
      raise ValueError(
        f"{source}: shape mismatch for '{entry.key}': expected {entry.torch_shape}, found {shape}"
      )
    values.append(entry.to_tf(value).astype(entry.variable.dtype.as_numpy_dtype))
  used = {entry.key for entry in entries}
  leftovers = [k for k in state if k not in used and not k.endswith(".num_batches_tracked")]
  unexpected = [k for k in leftovers if k.startswith(tuple(network_prefixes))]
  if unexpected:
    raise ValueError(
      f"{source}: unexpected key '{unexpected[0]}' "
      f"(shape {tuple(np.shape(state[unexpected[0]]))}; {len(unexpected)} such key(s)): the "
      "checkpoint's network differs from the inferred one"
    )
  for entry, value in zip(entries, values):
    entry.variable.assign(value)
  ignored = sum(1 for k in state if k.endswith(".num_batches_tracked"))
  return ImportReport(loaded=len(entries), unused=sorted(leftovers), ignored=ignored)
