"""Imports TF2 DELG training checkpoints of the DELF code base.

DELF's `training/train.py` (tensorflow/models research/delf) saves
`tf.train.Checkpoint(optimizer=..., model=delg_model.Delg)` with a
CheckpointManager in `<logdir>/delf_tf2-ckpt/ckpt-N`, and
`model.save_weights(<logdir>/delf_weights)`. Both are read here; variable keys
are the model's attribute paths, e.g.
`model/backbone/l4a/conv2a/kernel/.ATTRIBUTES/VARIABLE_VALUE` (the
`save_weights` file has the same keys without `model/`).

Mapping (DELF attribute path -> this project's DelgModel, 'delf' layout):
  - backbone/conv1, backbone/bn_conv1 -> backbone.stem_conv / stem_bn.
  - backbone/l{2..5}{a,b,...}/{conv2a,bn2a,conv2b,bn2b,conv2c,bn2c,
    conv_shortcut,bn_shortcut} -> the block's attributes of the same names
    (`ResNetBackbone.delf_layers`).
  - backbone/embedding_layer -> whitening.
  - attention/{conv1,bn_conv1,conv2} -> attention.{conv1,bn,conv2}.
  - autoencoder/{conv1,conv2} -> autoencoder.{reduce,expand}.
  - attn_classification (DELF's `att_fc`) -> attention_classifier.
  - cosine_weights [embedding_dim, num_classes] and scale_factor (DELF's
    ArcFace) -> an ArcFace head's kernel and scale (with `import_head`).
Conv kernels, Dense kernels and BatchNorm statistics have the same layout in
both (Keras), so values are copied as they are.

Inferred from the variables: ResNet depth (blocks per stage), width (stem
channels / 64), embedding, autoencoder and attention sizes, number of classes.
Not stored, hence arguments: `block3_strides` (DELF's default True), the GeM
power (DELF's default 3) and the ArcFace margin (DELF's default 0.1). DELF
takes images normalised as (x - 128) / 128, which is DELG_MODEL's input.
Only checkpoints trained with the autoencoder (train.py's default
--use_autoencoder) are supported: without it DELF's attention pools block3
itself, which DelgModel does not do.
"""

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

from dolg_tf import config as config_lib
from dolg_tf.convert import artefacts, weight_mapping
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, builder, heads

CHECKPOINT_SUBDIR = "delf_tf2-ckpt"  # train.py's CheckpointManager folder
WEIGHTS_PREFIX = "delf_weights"  # train.py's model.save_weights file
_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_CONV = ("kernel", "bias")
_BN = ("gamma", "beta", "moving_mean", "moving_variance")
# Checkpoint entries that are not network weights.
_BOOKKEEPING = re.compile(
  r"^(optimizer/|save_counter/|_CHECKPOINTABLE_OBJECT_GRAPH)|OPTIMIZER_SLOT"
)
_NETWORK_PREFIXES = ("backbone/", "attention/", "autoencoder/", "attn_classification/")


@dataclasses.dataclass
class ConvertedModel:
  """A converted DELF checkpoint.

  Attributes:
    model: the DelgModel with DELF's weights.
    config: its ModelConfig.
    head: the ArcFace head (cosine_weights), or None.
    report: the ImportReport.
    checkpoint: the checkpoint prefix that was read.
  """

  model: keras.Model
  config: config_lib.ModelConfig
  head: heads.CosineHead | None
  report: weight_mapping.ImportReport
  checkpoint: str


def resolve_checkpoint(path: str) -> str:
  """The checkpoint prefix for a prefix, a checkpoint folder or a DELF logdir.

  Raises:
    OSError: nothing readable there (naming `path`).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    for folder in (path, os.path.join(path, CHECKPOINT_SUBDIR)):
      latest = tf.train.latest_checkpoint(folder)
      if latest:
        return latest
    weights = os.path.join(path, WEIGHTS_PREFIX)
    if tf.io.gfile.exists(weights + ".index"):
      return weights
    raise OSError(f"{path}: no TF2 checkpoint in this folder or its {CHECKPOINT_SUBDIR}/")
  if tf.io.gfile.exists(path + ".index"):
    return path
  raise OSError(f"{path}: no such checkpoint (no folder, no {path}.index)")


class _Checkpoint:
  """Lazy reader of one checkpoint's variables (keys without root and suffix)."""

  def __init__(self, prefix: str):
    self.prefix = prefix
    try:
      self.reader = tf.train.load_checkpoint(prefix)
      shapes = self.reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as e:
      raise OSError(f"{prefix}: cannot read the checkpoint: {str(e).splitlines()[0]}") from e
    self.all_keys = list(shapes)
    if "model/backbone/conv1/kernel" + _SUFFIX in shapes:
      self.root = "model/"
    elif "backbone/conv1/kernel" + _SUFFIX in shapes:
      self.root = ""
    else:
      raise ValueError(
        f"{prefix}: not a DELF/DELG checkpoint (no variable 'model/backbone/conv1/kernel')"
      )
    self.shapes = {}
    for key, shape in shapes.items():
      if key.startswith(self.root) and key.endswith(_SUFFIX) and not _BOOKKEEPING.search(key):
        self.shapes[key[len(self.root) : -len(_SUFFIX)]] = tuple(shape)

  def key(self, name: str) -> str:
    return f"{self.root}{name}{_SUFFIX}"

  def shape(self, name: str) -> tuple | None:
    return self.shapes.get(name)

  def require(self, name: str, rank: int) -> tuple:
    shape = self.shapes.get(name)
    if shape is None:
      raise ValueError(f"{self.prefix}: missing variable '{self.key(name)}'")
    if len(shape) != rank:
      raise ValueError(
        f"{self.prefix}: variable '{self.key(name)}' has shape {shape}, expected rank {rank}"
      )
    return shape

  def value(self, name: str) -> np.ndarray:
    return self.reader.get_tensor(self.key(name))


def _infer_depth(ckpt: _Checkpoint) -> int:
  counts = []
  for stage in range(2, 6):
    pattern = re.compile(rf"^backbone/l{stage}[a-z]\d*/conv2a/kernel$")
    counts.append(sum(1 for name in ckpt.shapes if pattern.match(name)))
  for depth, blocks in backbones.STAGE_BLOCKS.items():
    if tuple(counts) == tuple(blocks):
      return depth
  raise ValueError(
    f"{ckpt.prefix}: blocks per stage {tuple(counts)} match no ResNet depth "
    f"({ {d: b for d, b in backbones.STAGE_BLOCKS.items()} })"
  )


def infer_model_config(
  ckpt: _Checkpoint, block3_strides: bool = True, gem_p: float = 3.0, arcface_margin: float = 0.1
) -> config_lib.ModelConfig:
  """The DELG ModelConfig ('delf' layout) of a DELF checkpoint."""
  stem = ckpt.require("backbone/conv1/kernel", 4)
  if stem[:3] != (7, 7, 3):
    raise ValueError(
      f"{ckpt.prefix}: variable '{ckpt.key('backbone/conv1/kernel')}' has shape {stem}, "
      "expected (7, 7, 3, channels)"
    )
  if ckpt.shape("backbone/embedding_layer/kernel") is None:
    raise ValueError(
      f"{ckpt.prefix}: missing variable '{ckpt.key('backbone/embedding_layer/kernel')}' "
      "(a DELF checkpoint without DELG's global head?)"
    )
  if ckpt.shape("autoencoder/conv1/kernel") is None:
    raise ValueError(
      f"{ckpt.prefix}: missing variable '{ckpt.key('autoencoder/conv1/kernel')}' "
      "(only DELG checkpoints trained with the autoencoder are supported)"
    )
  overrides = dict(
    backbone_depth=_infer_depth(ckpt),
    backbone_width_multiplier=stem[3] / 64.0,
    block3_strides=block3_strides,
    gem_p=gem_p,
    embedding_dim=ckpt.require("backbone/embedding_layer/kernel", 2)[1],
    delg_reduced_dim=ckpt.require("autoencoder/conv1/kernel", 4)[3],
    delg_attention_hidden=ckpt.require("attention/conv1/kernel", 4)[3],
    head_margin=arcface_margin,
  )
  if ckpt.shape("scale_factor") is not None:
    overrides["head_scale"] = float(ckpt.value("scale_factor"))
  return config_lib.delg_config(**overrides)


def _entries(model, head=None) -> list[tuple[str, tf.Variable]]:
  """(DELF name, variable) pairs of a built 'delf'-layout DelgModel."""

  def layer_entries(name, layer, weights):
    return [(f"{name}/{w}", getattr(layer, w)) for w in weights]

  entries = []
  for name, layer in model.backbone.delf_layers().items():
    weights = _BN if isinstance(layer, keras.layers.BatchNormalization) else _CONV
    entries += layer_entries(f"backbone/{name}", layer, weights)
  entries += layer_entries("backbone/embedding_layer", model.whitening, _CONV)
  entries += layer_entries("attention/conv1", model.attention.conv1, _CONV)
  entries += layer_entries("attention/bn_conv1", model.attention.bn, _BN)
  entries += layer_entries("attention/conv2", model.attention.conv2, _CONV)
  entries += layer_entries("autoencoder/conv1", model.autoencoder.reduce, _CONV)
  entries += layer_entries("autoencoder/conv2", model.autoencoder.expand, _CONV)
  if model.attention_classifier is not None:
    entries += layer_entries("attn_classification", model.attention_classifier, _CONV)
  if head is not None:
    entries.append(("cosine_weights", head.kernel))
  return entries


def assign_delf_weights(model, ckpt: _Checkpoint, head=None) -> weight_mapping.ImportReport:
  """Checks every variable and shape first, then assigns (nothing is assigned on error).

  Raises:
    ValueError: naming the checkpoint and the first missing, mis-shaped or
      unexpected network variable.
  """
  entries = _entries(model, head)
  values = []
  for name, variable in entries:
    shape = ckpt.shape(name)
    if shape is None:
      raise ValueError(
        f"{ckpt.prefix}: missing variable '{ckpt.key(name)}' "
        f"(expected shape {tuple(variable.shape)})"
      )
    if shape != tuple(variable.shape):
      raise ValueError(
        f"{ckpt.prefix}: shape mismatch for '{ckpt.key(name)}': expected "
        f"{tuple(variable.shape)}, found {shape}"
      )
    values.append(ckpt.value(name))
  used = {name for name, _ in entries} | {"scale_factor"}  # the scale goes into the config
  leftovers = sorted(name for name in ckpt.shapes if name not in used)
  unexpected = [name for name in leftovers if name.startswith(_NETWORK_PREFIXES)]
  if unexpected:
    raise ValueError(
      f"{ckpt.prefix}: unexpected variable '{ckpt.key(unexpected[0])}' "
      f"(shape {ckpt.shapes[unexpected[0]]}; {len(unexpected)} such variable(s)): the "
      "checkpoint's network differs from the inferred one"
    )
  for (_, variable), value in zip(entries, values):
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))
  ignored = len(ckpt.all_keys) - len(ckpt.shapes)
  return weight_mapping.ImportReport(loaded=len(entries), unused=leftovers, ignored=ignored)


def load_delf_checkpoint(
  checkpoint: str,
  block3_strides: bool = True,
  gem_p: float = 3.0,
  arcface_margin: float = 0.1,
  import_head: bool = False,
) -> ConvertedModel:
  """Builds a DelgModel (and optionally the ArcFace head) from a DELF checkpoint.

  Args:
    checkpoint: a checkpoint prefix, a folder with a `checkpoint` file, or a
      DELF training logdir (its `delf_tf2-ckpt/`, else `delf_weights`).
    block3_strides: DELF's --block3_strides (not stored; default True).
    gem_p: DELF's GeM power (not stored; default 3).
    arcface_margin: DELF's --arcface_margin (not stored; default 0.1).
    import_head: also import `cosine_weights` (and `scale_factor`) as an
      ArcFace head.

  Returns:
    A ConvertedModel.

  Raises:
    OSError: the checkpoint cannot be found or read (named).
    ValueError: not a DELF checkpoint, or a variable does not fit (named).
  """
  prefix = resolve_checkpoint(checkpoint)
  ckpt = _Checkpoint(prefix)
  config = infer_model_config(ckpt, block3_strides, gem_p, arcface_margin)
  attention_classifier = ckpt.shape("attn_classification/kernel")
  num_classes = attention_classifier[1] if attention_classifier else None
  model = builder.build_model(config, image_size=64, num_classes=num_classes)
  head = None
  if import_head:
    weights = ckpt.require("cosine_weights", 2)
    head = builder.build_head(config, weights[1])
    head(tf.zeros([1, config.embedding_dim]))
  report = assign_delf_weights(model, ckpt, head)
  logging.info(
    "%s: R%d width %g, embedding %d, reduced %d, %s classes: %s",
    prefix,
    config.backbone_depth,
    config.backbone_width_multiplier,
    config.embedding_dim,
    config.delg_reduced_dim,
    num_classes,
    report.summary(),
  )
  return ConvertedModel(model, config, head, report, prefix)


def convert_delf_checkpoint(
  checkpoint: str,
  output_dir: str,
  block3_strides: bool = True,
  gem_p: float = 3.0,
  arcface_margin: float = 0.1,
  import_head: bool = False,
  export_config: config_lib.ExportConfig | None = None,
) -> dict[str, str]:
  """Converts a DELF DELG checkpoint into `output_dir`.

  Writes (atomically: into a temporary sibling folder renamed at the end)
  `config.json` (model + export sections), `checkpoints/ckpt-1*` (a
  tf.train.Checkpoint with `model` and, with `import_head`, `head`) and
  `export/1/` (SavedModel).

  Args:
    checkpoint, block3_strides, gem_p, arcface_margin, import_head: see
      `load_delf_checkpoint`.
    output_dir: a new or empty folder.
    export_config: the export's pyramid and size limits; default ExportConfig().

  Returns:
    Paths: 'model_config', 'checkpoint' (prefix), 'export'; and 'report', the
    one-line import summary.

  Raises:
    FileExistsError: if `output_dir` exists and is not empty.
    OSError, ValueError: see load_delf_checkpoint.
  """
  artefacts.check_output_dir(output_dir)
  converted = load_delf_checkpoint(checkpoint, block3_strides, gem_p, arcface_margin, import_head)
  return artefacts.write_artefacts(
    converted,
    output_dir,
    export_config or config_lib.ExportConfig(),
    source=f"checkpoint {checkpoint}",
  )
