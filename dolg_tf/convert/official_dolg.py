"""Imports official DOLG PyTorch checkpoints and torchvision ResNet weights.

Official DOLG checkpoints (github.com/feymanpriv/DOLG, pycls-based) are `.pyth`
files holding `{"model_state": state_dict, ...}`. `convert_official_checkpoint`
turns one into this project's artefacts: a TF checkpoint, `config.json`,
a SavedModel export and a DolgConfig extraction `.pbtxt`.

Mapping:
  - The network structure is read from the keys: ResNet depth from the number
    of `globalmodel.s3.b*` blocks (2, 6, 23, 36 -> 26, 50, 101, 152), width
    from the stem, multi-atrous module from `localmodel.aspp.*` (its number of
    dilated convs; the dilation values are not stored, 6/12/18 unless given),
    learnable GeM p from `pool_g.p` (absent: fixed p, 3 unless given), f_g and
    embedding sizes from `fc_t` / `fc`.
  - Conv kernels OIHW -> HWIO, Linear weights [out, in] -> [in, out], BatchNorm
    weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
    moving_variance (epsilon 1e-5 as PyTorch).
  - Every tensor of the network must be present with the expected shape; the
    first missing or mis-shaped key (or an unexpected network key, e.g. a
    deeper stage) stops the import with one line naming it. Other keys
    (`desc_cls.*` unless the head is imported, optimizer leftovers) are
    reported as unused; BatchNorm `num_batches_tracked` counters are ignored.
  - The pycls option STRIDE_1X1 (stride on the first 1x1 conv) gives the same
    shapes and cannot be detected; the official DOLG config does not use it.

Input convention: the official model takes BGR images scaled to [0, 1] and
normalised with mean (0.406, 0.456, 0.485) and std (0.225, 0.224, 0.229) in
BGR order, i.e. the RGB ImageNet statistics. Our models take RGB pixels in
[0, 255] and normalise internally, so the converted ModelConfig uses the RGB
ImageNet statistics in pixel units (mean 255 * (0.485, 0.456, 0.406), std
255 * (0.229, 0.224, 0.225)) and `input_channel_order='BGR'`, which reverses
the channels after normalising: ((rgb - mean_rgb) / std_rgb)[..., ::-1] equals
(bgr / 255 - mean_bgr) / std_bgr channel by channel. Nothing about the weights
changes (the stem kernel keeps its BGR input channels), and callers keep
feeding RGB like every other model of this project.

torchvision ResNets (`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`, `bn{1,2,3}`,
`downsample.{0,1}`) have the same layout as the pycls backbone;
`load_torchvision_resnet` loads one (from a state dict, a `.pth`, or an `.npz`
of the same keys, the latter without torch) as a training initialisation. Their
input is RGB with the same statistics (`TORCHVISION_INPUT`).

torch is optional: it is imported only to read `.pyth`/`.pth` files or
torch tensors; `.npz` files and numpy state dicts work without it.
"""

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from dolg_tf import config as config_lib
from dolg_tf.convert import artefacts
from dolg_tf.io import config_io, savedmodel_contract
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, builder, heads

# The official preprocessing, on [0, 1] pixels in BGR order.
OFFICIAL_BGR_MEAN = (0.406, 0.456, 0.485)
OFFICIAL_BGR_STD = (0.225, 0.224, 0.229)
# The same normalisation for RGB pixels in [0, 255], followed by RGB -> BGR.
OFFICIAL_INPUT = dict(
  input_mean=tuple(round(255.0 * m, 6) for m in reversed(OFFICIAL_BGR_MEAN)),
  input_std=tuple(round(255.0 * s, 6) for s in reversed(OFFICIAL_BGR_STD)),
  input_channel_order="BGR",
)
# torchvision ImageNet weights: RGB input, ImageNet statistics.
TORCHVISION_INPUT = dict(
  input_mean=config_lib.IMAGENET_MEAN_RGB,
  input_std=config_lib.IMAGENET_STD_RGB,
  input_channel_order="RGB",
)
# The converter's default pyramid: savedmodel_contract.PYRAMID_PRESETS['official_5'] (the
# official evaluation's, evaler/infer.py), used with no size cap, so converted weights give
# the official descriptors. The DELF-style alternative: PYRAMID_PRESETS['delf_3'] (the
# paper's 3 scales), largest side capped at:
DELF_STYLE_MAX_IMAGE_SIZE = 1024
# Number of blocks in stage 3 -> ModelConfig.backbone_depth.
DEPTH_BY_STAGE3_BLOCKS = {blocks[2]: depth for depth, blocks in backbones.STAGE_BLOCKS.items()}
# Prefixes of the keys that make up the descriptor network: an unmatched key under
# one of them means the checkpoint's structure differs from the model we build.
NETWORK_PREFIXES = ("globalmodel.", "localmodel.", "pool_g.", "fc_t.", "fc.")
TORCHVISION_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
PBTXT_FILENAME = "dolg_official.pbtxt"

_BN_FIELDS = (
  ("weight", "gamma"),
  ("bias", "beta"),
  ("running_mean", "moving_mean"),
  ("running_var", "moving_variance"),
)
_PYCLS_BLOCK_LAYERS = ("a", "a_bn", "b", "b_bn", "c", "c_bn", "proj", "bn")
_TORCHVISION_BLOCK_LAYERS = {
  "a": "conv1",
  "a_bn": "bn1",
  "b": "conv2",
  "b_bn": "bn2",
  "c": "conv3",
  "c_bn": "bn3",
  "proj": "downsample.0",
  "bn": "downsample.1",
}


@dataclasses.dataclass(frozen=True)
class _Entry:
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
    loaded: number of tensors assigned.
    unused: checkpoint keys that were not used (sorted).
    ignored: number of BatchNorm `num_batches_tracked` counters skipped.
  """

  loaded: int
  unused: list[str]
  ignored: int


@dataclasses.dataclass
class ConvertedModel:
  """A converted official checkpoint.

  Attributes:
    model: the DolgModel with the official weights.
    config: its ModelConfig (official input convention, inferred structure).
    head: the CurricularFace head with `desc_cls` weights, or None.
    report: what the import consumed.
  """

  model: keras.Model
  config: config_lib.ModelConfig
  head: heads.CosineHead | None
  report: ImportReport


# --------------------------------------------------------------------------- reading


def _to_numpy(value, key: str, source: str) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch.Tensor
    tensor = value.detach().cpu()
    if tensor.is_floating_point():
      tensor = tensor.float()  # float16 / bfloat16 -> float32
    return tensor.numpy()
  raise ValueError(f"{source}: not a state dict: key '{key}' holds a {type(value).__name__}")


def _torch_load(path: str):
  """torch.load(weights_only=True) with one-line errors naming `path`."""
  with open(path, "rb") as f:
    header = f.read(4)
  # torch.save writes a zip archive; the legacy format starts with a pickle opcode.
  if not (header.startswith(b"PK\x03\x04") or header.startswith(b"\x80")):
    raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
  try:
    import torch  # optional dependency, imported only here
  except ImportError as e:
    raise ImportError(
      f"{path}: reading PyTorch files needs torch, or save the state dict as .npz "
      f"(numpy.savez) first: {e}"
    ) from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many exception types for corrupt files
    message = str(e)
    marker = "WeightsUnpickler error:"
    if marker in message:  # a pickle that is not plain tensors / containers
      reason = "not loadable with weights_only=True: " + message.split(marker, 1)[1]
    else:
      reason = message
    reason = " ".join(reason.split())[:200]
    raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason})") from e


def unwrap_state_dict(obj, source: str = "<state dict>") -> dict[str, np.ndarray]:
  """Returns the float32/int numpy state dict inside a loaded checkpoint object.

  Accepts a pycls checkpoint (`{"model_state": ...}`), a `{"state_dict": ...}`
  wrapper or a bare state dict, with or without DataParallel's `module.`
  prefix; values may be torch tensors or numpy arrays.

  Raises:
    ValueError: naming `source`, if `obj` is not a state dict.
  """
  if isinstance(obj, Mapping):
    for wrapper in ("model_state", "state_dict"):
      if wrapper in obj and isinstance(obj[wrapper], Mapping):
        obj = obj[wrapper]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f"{source}: not a state dict (got {type(obj).__name__})")
  state = {}
  for key, value in obj.items():
    if not isinstance(key, str):
      raise ValueError(f"{source}: not a state dict: key {key!r} is not a string")
    name = key[len("module.") :] if key.startswith("module.") else key
    state[name] = _to_numpy(value, key, source)
  return state


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state dict from a PyTorch file (`.pyth`, `.pth`, ...) or an `.npz`.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ImportError: for a PyTorch file when torch is not installed.
    ValueError: naming `path`, if it is not a checkpoint / state dict.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        return unwrap_state_dict({k: data[k] for k in data.files}, path)
    except (OSError, ValueError) as e:
      if path in str(e):
        raise
      raise ValueError(f"{path}: not a readable .npz state dict ({e})") from e
  return unwrap_state_dict(_torch_load(path), path)


# --------------------------------------------------------------------------- structure


def _block_count(state: Mapping[str, np.ndarray], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"b(\d+)\.")
  indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
  return max(indices, default=0)


def _require(state: Mapping[str, np.ndarray], key: str, rank: int, source: str) -> np.ndarray:
  if key not in state:
    raise ValueError(f"{source}: missing key '{key}'")
  value = state[key]
  if value.ndim != rank:
    raise ValueError(f"{source}: '{key}' has shape {tuple(value.shape)}, expected rank {rank}")
  return value


# Keys every official DOLG state dict has, checked in this order when its depth cannot be inferred.
_STRUCTURE_KEYS = (
  "globalmodel.stem.conv.weight",
  "globalmodel.s1.b1.f.a.weight",
  "globalmodel.s3.b1.f.a.weight",
  "localmodel.conv1.weight",
  "fc_t.weight",
  "fc.weight",
)


def _depth_inference_error(state: Mapping[str, np.ndarray], blocks: int, source: str) -> str:
  """Why the depth of `state` cannot be inferred, naming the first missing / unexpected key."""
  known = NETWORK_PREFIXES + ("desc_cls.",)
  unknown = [k for k in state if not k.startswith(known)]
  if blocks == 0:
    missing = next((k for k in _STRUCTURE_KEYS if k not in state), "globalmodel.s3.b1.f.a.weight")
    message = f"{source}: missing key '{missing}'"
    if unknown:
      message += f", unexpected key '{unknown[0]}' ({len(unknown)} of {len(state)} keys unknown)"
    return message + ": not an official DOLG state dict (cannot infer the ResNet depth)"
  counts = sorted(DEPTH_BY_STAGE3_BLOCKS)
  message = (
    f"{source}: cannot infer the ResNet depth: {blocks} blocks under 'globalmodel.s3.' "
    f"(expected one of {', '.join(map(str, counts))})"
  )
  more = [c for c in counts if c > blocks]
  if more:  # the next structure up lacks these blocks
    depth = DEPTH_BY_STAGE3_BLOCKS[more[0]]
    missing = next(
      b
      for b in range(1, more[0] + 1)
      if not any(k.startswith(f"globalmodel.s3.b{b}.") for k in state)
    )
    return (
      message + f": missing key 'globalmodel.s3.b{missing}.f.a.weight' (R{depth} has {more[0]})"
    )
  prefix = f"globalmodel.s3.b{counts[-1] + 1}."
  extra = next((k for k in state if k.startswith(prefix)), prefix)
  depth = DEPTH_BY_STAGE3_BLOCKS[counts[-1]]
  return message + f": unexpected key '{extra}' (R{depth} has {counts[-1]})"


def infer_model_config(
  state: Mapping[str, np.ndarray],
  depth: int | None = None,
  atrous_dilations: Sequence[int] | None = None,
  fixed_gem_p: float = 3.0,
  source: str = "<state dict>",
) -> config_lib.ModelConfig:
  """Reads the network structure of an official DOLG state dict.

  Args:
    state: the state dict (see `unwrap_state_dict`).
    depth: ResNet depth; None infers it from the stage-3 block count.
    atrous_dilations: dilations of the multi-atrous convs (not stored in the
      checkpoint); None means the official (6, 12, 18).
    fixed_gem_p: GeM p when the checkpoint has no learnable `pool_g.p`.
    source: name used in error messages.

  Returns:
    A ModelConfig with the official input convention and head settings.

  Raises:
    ValueError: naming `source`, if the structure cannot be determined.
  """
  if depth is None:
    blocks = _block_count(state, "globalmodel.s3.")
    if blocks not in DEPTH_BY_STAGE3_BLOCKS:
      raise ValueError(_depth_inference_error(state, blocks, source))
    depth = DEPTH_BY_STAGE3_BLOCKS[blocks]
  stem = _require(state, "globalmodel.stem.conv.weight", 4, source)
  fc_t = _require(state, "fc_t.weight", 2, source)
  fc = _require(state, "fc.weight", 2, source)
  if fc.shape[1] != 2 * fc_t.shape[0]:  # fc sees [f_g, f_o], both of fc_t's output size.
    raise ValueError(
      f"{source}: shape mismatch for 'fc.weight': expected ({fc.shape[0]}, "
      f"{2 * fc_t.shape[0]}), found {tuple(fc.shape)}"
    )
  use_multi_atrous = any(key.startswith("localmodel.aspp.") for key in state)
  dilations = tuple(atrous_dilations or config_lib.OFFICIAL_DILATIONS)
  if use_multi_atrous:
    pattern = re.compile(r"localmodel\.aspp\.aspp\.(\d+)\.weight$")
    convs = sum(1 for key in state if pattern.match(key))
    if convs - 1 != len(dilations):
      raise ValueError(
        f"{source}: the multi-atrous module has {convs - 1} dilated conv(s) "
        f"('localmodel.aspp.aspp.*'), but {len(dilations)} dilation(s) were given "
        f"{dilations}; pass --atrous_dilations with {convs - 1} value(s)"
      )
  learnable_p = "pool_g.p" in state
  gem_p = float(np.asarray(state["pool_g.p"]).reshape(-1)[0]) if learnable_p else fixed_gem_p
  return config_lib.ModelConfig(
    name="dolg",
    backbone_depth=depth,
    backbone_width_multiplier=stem.shape[0] / 64.0,
    backbone_layout="pycls",
    use_multi_atrous=use_multi_atrous,
    atrous_dilations=dilations,
    gem_p=gem_p,
    gem_p_trainable=learnable_p,
    local_dim=int(fc_t.shape[0]),
    embedding_dim=int(fc.shape[0]),
    head_type="curricularface",
    head_scale=30.0,
    head_margin=0.15,
    **OFFICIAL_INPUT,
  )


# --------------------------------------------------------------------------- mapping


def _conv_entries(layer, key: str) -> list[_Entry]:
  entries = [_Entry(f"{key}.weight", layer.kernel, "conv")]
  if layer.use_bias:
    entries.append(_Entry(f"{key}.bias", layer.bias, "same"))
  return entries


def _bn_entries(layer, key: str) -> list[_Entry]:
  return [_Entry(f"{key}.{t}", getattr(layer, k), "same") for t, k in _BN_FIELDS]


def _backbone_entries(backbone, stem_names, block_name) -> list[_Entry]:
  if backbone.layout != "pycls":
    raise ValueError(
      f"PyTorch ResNet weights need backbone_layout='pycls', got '{backbone.layout}'"
    )
  entries = _conv_entries(backbone.stem_conv, stem_names[0])
  entries += _bn_entries(backbone.stem_bn, stem_names[1])
  for stage_index, blocks in enumerate(backbone.stages):
    for block_index, block in enumerate(blocks):
      for name in _PYCLS_BLOCK_LAYERS:
        if name in ("proj", "bn") and not block.use_projection:
          continue
        layer = getattr(block, name)
        key = block_name(stage_index + 1, block_index + 1, name)
        if isinstance(layer, keras.layers.BatchNormalization):
          entries += _bn_entries(layer, key)
        else:
          entries += _conv_entries(layer, key)
  return entries


def _pycls_block_name(stage: int, block: int, layer: str) -> str:
  inner = "" if layer in ("proj", "bn") else "f."
  return f"globalmodel.s{stage}.b{block}.{inner}{layer}"


def _torchvision_block_name(stage: int, block: int, layer: str) -> str:
  return f"layer{stage}.{block - 1}.{_TORCHVISION_BLOCK_LAYERS[layer]}"


def _ensure_built(model, image_size: int = 64) -> None:
  if not model.built:
    model(tf.zeros([1, image_size, image_size, 3]), training=False)


def _official_entries(model, head=None) -> list[_Entry]:
  _ensure_built(model)
  entries = _backbone_entries(
    model.backbone, ("globalmodel.stem.conv", "globalmodel.stem.bn"), _pycls_block_name
  )
  if model.multi_atrous is not None:
    aspp = model.multi_atrous
    entries += _conv_entries(aspp.image_pool_conv, "localmodel.aspp.im_pool.1")
    for i, branch in enumerate(aspp.branches):
      entries += _conv_entries(branch, f"localmodel.aspp.aspp.{i}")
    entries += _conv_entries(aspp.fuse, "localmodel.aspp.conv_after.0")
  entries += _conv_entries(model.attention.conv1, "localmodel.conv1")
  entries += _bn_entries(model.attention.bn, "localmodel.bn")
  entries += _conv_entries(model.attention.conv2, "localmodel.conv2")
  if model.pool_g.trainable_p:
    entries.append(_Entry("pool_g.p", model.pool_g.p, "scalar"))
  for name in ("fc_t", "fc"):
    layer = getattr(model, name)
    entries += [
      _Entry(f"{name}.weight", layer.kernel, "dense"),
      _Entry(f"{name}.bias", layer.bias, "same"),
    ]
  if head is not None:
    entries += [
      _Entry("desc_cls.weight", head.kernel, "dense"),
      _Entry("desc_cls.t", head.t, "scalar"),
    ]
  return entries


def _assign(
  entries: Sequence[_Entry],
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


def assign_official_weights(
  model, state: Mapping[str, np.ndarray], head=None, source: str = "<state dict>"
) -> ImportReport:
  """Assigns an official DOLG state dict to a (pycls-layout) DolgModel.

  Args:
    model: a DolgModel whose structure matches the checkpoint.
    state: the state dict (see `unwrap_state_dict`).
    head: if given, a CurricularFace head receiving `desc_cls.weight` / `.t`.
    source: name used in error messages.

  Returns:
    The ImportReport.

  Raises:
    ValueError: naming `source` and the first missing, mis-shaped or
      unexpected network key; the model is left unchanged.
  """
  return _assign(_official_entries(model, head), state, NETWORK_PREFIXES, source)


def official_state_dict(model, head=None) -> dict[str, np.ndarray]:
  """The inverse mapping: a DolgModel (and head) as an official DOLG state dict (numpy)."""
  return {entry.key: entry.to_torch() for entry in _official_entries(model, head)}


def load_official_checkpoint(
  checkpoint,
  depth: int | None = None,
  atrous_dilations: Sequence[int] | None = None,
  fixed_gem_p: float = 3.0,
  import_head: bool = False,
) -> ConvertedModel:
  """Builds a DolgModel (and optionally the head) from an official checkpoint.

  Args:
    checkpoint: a path (`.pyth`/`.pth` via torch, or `.npz`) or a loaded
      checkpoint / state dict.
    depth: ResNet depth; None infers it.
    atrous_dilations: multi-atrous dilations; None = official (6, 12, 18).
    fixed_gem_p: GeM p for checkpoints without a learnable `pool_g.p`.
    import_head: also import `desc_cls` as a CurricularFace head.

  Returns:
    A ConvertedModel.

  Raises:
    ValueError: naming the checkpoint and the first key that does not fit.
  """
  if isinstance(checkpoint, str | os.PathLike):
    source = os.fspath(checkpoint)
    state = read_state_dict(source)
  else:
    source = "<state dict>"
    state = unwrap_state_dict(checkpoint, source)
  config = infer_model_config(state, depth, atrous_dilations, fixed_gem_p, source)
  model = builder.build_model(config, image_size=32)
  head = None
  if import_head:
    weight = _require(state, "desc_cls.weight", 2, source)
    head = builder.build_head(config, int(weight.shape[0]))
    head(tf.zeros([1, config.embedding_dim]))
  report = assign_official_weights(model, state, head, source)
  logging.info(
    "%s: loaded %d tensors (R%d, multi-atrous %s, GeM p %.4f %s); %d unused key(s)%s",
    source,
    report.loaded,
    config.backbone_depth,
    config.use_multi_atrous,
    config.gem_p,
    "learnable" if config.gem_p_trainable else "fixed",
    len(report.unused),
    (": " + ", ".join(report.unused[:10]) + (" ..." if len(report.unused) > 10 else ""))
    if report.unused
    else "",
  )
  return ConvertedModel(model=model, config=config, head=head, report=report)


# --------------------------------------------------------------------------- outputs


def official_dolg_pbtxt(
  model_path: str,
  max_image_size: int = -1,
  image_scales=savedmodel_contract.PYRAMID_PRESETS["official_5"],
) -> str:
  """A DolgConfig (text format) with the official DOLG test-time settings.

  Raises:
    ValueError: if the result does not validate.
  """
  scales = "\n".join(f"image_scales: {float(s):g}" for s in image_scales)
  text = f"""# proto-file: protos/dolg_config.proto
# proto-message: dolg_tf.protos.DolgConfig
#
# Extraction config for a DOLG model converted from the official PyTorch code
# (dolg_tf.convert.convert_official_dolg). By default it reproduces the
# official evaluation (evaler/infer.py): the whole image at scales 0.3535, 0.5,
# 0.7071, 1 and 1.4142 with no cap on its size, each scale resized bilinearly
# to round(s * H) x round(s * W) (Python rounding), each scale's descriptor
# L2-normalised, averaged, re-normalised; query boxes truncated to integers.
#
# DELF-style alternative (faster on large photos, slightly different
# descriptors): image_scales 0.7071, 1, 1.4142 and max_image_size: 1024
# (convert with --image_scales=0.7071,1,1.4142 --max_image_size=1024), and
# query_box_rounding: ROUND.
model_path: "{model_path}"

{scales}

max_image_size: {int(max_image_size)}
min_image_size: -1

use_global_features: true
use_local_features: false

global_config {{
  use_pca: false
  scale_pooling: AVERAGE
}}

query_box_rounding: TRUNCATE

global_descriptor_suffix: ".dolg_global"
"""
  config_io.parse_dolg_config(text, "<official_dolg_pbtxt>")
  return text


def convert_official_checkpoint(
  checkpoint: str,
  output_dir: str,
  depth: int | None = None,
  atrous_dilations: Sequence[int] | None = None,
  fixed_gem_p: float = 3.0,
  import_head: bool = False,
  max_image_size: int = -1,
  image_scales: Sequence[float] = savedmodel_contract.PYRAMID_PRESETS["official_5"],
  precision: str = "float32",
) -> dict[str, str]:
  """Converts an official checkpoint into `output_dir`.

  Writes (atomically: everything goes to a temporary sibling folder that is
  renamed at the end) `config.json` (model + export sections), `checkpoints/ckpt-1*` (a
  tf.train.Checkpoint with `model` and, with `import_head`, `head`),
  `export/1/` (SavedModel) and `dolg_official.pbtxt` pointing at the export.

  Args:
    checkpoint: the official `.pyth` (or `.npz` of its state dict).
    output_dir: a new or empty folder.
    depth, atrous_dilations, fixed_gem_p, import_head: see
      `load_official_checkpoint`.
    max_image_size: for the export and the .pbtxt; -1 (default, the official
      evaluation) = no cap.
    image_scales: the export's default pyramid and the .pbtxt scales (default
      the official evaluation's five).
    precision: the export's compute precision (savedmodel_contract.EXPORT_PRECISIONS); the
      checkpoint keeps the float32 weights.

  Returns:
    Paths: 'model_config', 'checkpoint' (prefix), 'export', 'pbtxt'.

  Raises:
    FileExistsError: if `output_dir` exists and is not empty.
    ValueError: if the checkpoint does not fit (see load_official_checkpoint).
  """
  artefacts.check_output_dir(output_dir)
  converted = load_official_checkpoint(
    checkpoint, depth, atrous_dilations, fixed_gem_p, import_head
  )
  export_config = config_lib.ExportConfig(
    image_scales=tuple(image_scales), max_image_size=max_image_size, precision=precision
  )

  def write_pbtxt(tmp_dir, final_export):
    path = os.path.join(tmp_dir, PBTXT_FILENAME)
    with open(path, "w") as f:
      f.write(official_dolg_pbtxt(final_export, max_image_size, image_scales))
    return {"pbtxt": path}

  return artefacts.write_artefacts(
    converted, output_dir, export_config, write_pbtxt, source=f"checkpoint {checkpoint}"
  )


# --------------------------------------------------------------------------- torchvision


def _torchvision_entries(backbone) -> list[_Entry]:
  _ensure_built(backbone)
  return _backbone_entries(backbone, ("conv1", "bn1"), _torchvision_block_name)


def load_torchvision_resnet(backbone, state_dict_or_path) -> ImportReport:
  """Loads torchvision ResNet weights into a pycls-layout ResNetBackbone.

  Args:
    backbone: a `ResNetBackbone` with layout 'pycls' (built on first use if
      needed), e.g. `model.backbone` of a DolgModel.
    state_dict_or_path: a state dict (torch tensors or numpy arrays), a
      `.pth` path (read with torch) or an `.npz` of the same keys (no torch).
      The classifier (`fc.*`) is reported as unused.

  Returns:
    The ImportReport.

  Raises:
    ValueError: naming the source and the first missing, mis-shaped or
      unexpected backbone key (the backbone is left unchanged), or if the
      backbone is not in the pycls layout.
  """
  if isinstance(state_dict_or_path, str | os.PathLike):
    source = os.fspath(state_dict_or_path)
    state = read_state_dict(source)
  else:
    source = "<state dict>"
    state = unwrap_state_dict(state_dict_or_path, source)
  return _assign(_torchvision_entries(backbone), state, TORCHVISION_PREFIXES, source)


def torchvision_state_dict(backbone) -> dict[str, np.ndarray]:
  """A pycls-layout backbone as a torchvision ResNet state dict (numpy, no `fc`)."""
  return {entry.key: entry.to_torch() for entry in _torchvision_entries(backbone)}
