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

Modules: torch_state (reading `.pyth`/`.pth`/`.npz` into numpy; torch is
optional), official_structure (the structure inferred from the keys, the input
convention), weight_mapping (layouts, checked assignment), this module (the
official key names, loading, the converter's outputs); torchvision_resnet loads
torchvision ResNet weights into the same backbone as a training initialisation.
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from dolg_tf import config as config_lib
from dolg_tf.convert import artefacts, official_structure, torch_state, weight_mapping
from dolg_tf.io import config_io, savedmodel_contract
from dolg_tf.keras_api import keras
from dolg_tf.model import builder, heads

# The converter's default pyramid: savedmodel_contract.PYRAMID_PRESETS['official_5'] (the
# official evaluation's, evaler/infer.py), used with no size cap, so converted weights give
# the official descriptors. The DELF-style alternative: PYRAMID_PRESETS['delf_3'] (the
# paper's 3 scales), largest side capped at:
DELF_STYLE_MAX_IMAGE_SIZE = 1024
PBTXT_FILENAME = "dolg_official.pbtxt"


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
  report: weight_mapping.ImportReport


def _official_entries(model, head=None) -> list[weight_mapping.Entry]:
  weight_mapping.ensure_built(model)
  entries = weight_mapping.backbone_entries(
    model.backbone,
    ("globalmodel.stem.conv", "globalmodel.stem.bn"),
    weight_mapping.pycls_block_name,
  )
  if model.multi_atrous is not None:
    aspp = model.multi_atrous
    entries += weight_mapping.conv_entries(aspp.image_pool_conv, "localmodel.aspp.im_pool.1")
    for i, branch in enumerate(aspp.branches):
      entries += weight_mapping.conv_entries(branch, f"localmodel.aspp.aspp.{i}")
    entries += weight_mapping.conv_entries(aspp.fuse, "localmodel.aspp.conv_after.0")
  entries += weight_mapping.conv_entries(model.attention.conv1, "localmodel.conv1")
  entries += weight_mapping.bn_entries(model.attention.bn, "localmodel.bn")
  entries += weight_mapping.conv_entries(model.attention.conv2, "localmodel.conv2")
  if model.pool_g.trainable_p:
    entries.append(weight_mapping.Entry("pool_g.p", model.pool_g.p, "scalar"))
  for name in ("fc_t", "fc"):
    layer = getattr(model, name)
    entries += [
      weight_mapping.Entry(f"{name}.weight", layer.kernel, "dense"),
      weight_mapping.Entry(f"{name}.bias", layer.bias, "same"),
    ]
  if head is not None:
    entries += [
      weight_mapping.Entry("desc_cls.weight", head.kernel, "dense"),
      weight_mapping.Entry("desc_cls.t", head.t, "scalar"),
    ]
  return entries


def assign_official_weights(
  model, state: Mapping[str, np.ndarray], head=None, source: str = "<state dict>"
) -> weight_mapping.ImportReport:
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
  return weight_mapping.assign(
    _official_entries(model, head), state, official_structure.NETWORK_PREFIXES, source
  )


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
  state, source = torch_state.load_state(checkpoint)
  config = official_structure.infer_model_config(
    state, depth, atrous_dilations, fixed_gem_p, source
  )
  model = builder.build_model(config, image_size=32)
  head = None
  if import_head:
    weight = official_structure.require_tensor(state, "desc_cls.weight", 2, source)
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
