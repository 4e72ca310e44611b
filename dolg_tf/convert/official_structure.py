"""The network structure of an official DOLG state dict, read from its keys.

ResNet depth from the number of `globalmodel.s3.b*` blocks (2, 6, 23, 36 ->
26, 50, 101, 152), width from the stem, the multi-atrous module from
`localmodel.aspp.*` (its number of dilated convs; the dilation values are not
stored), learnable GeM p from `pool_g.p`, f_g and embedding sizes from `fc_t` /
`fc`. The official input convention (BGR in [0, 1], ImageNet statistics) is
expressed for this project's RGB [0, 255] inputs (see official_dolg.py).
"""

import re
from collections.abc import Mapping, Sequence

import numpy as np

from dolg_tf import config as config_lib
from dolg_tf import config_sections
from dolg_tf.model import backbones

# The official preprocessing, on [0, 1] pixels in BGR order.
OFFICIAL_BGR_MEAN = (0.406, 0.456, 0.485)
OFFICIAL_BGR_STD = (0.225, 0.224, 0.229)
# The same normalisation for RGB pixels in [0, 255], followed by RGB -> BGR.
OFFICIAL_INPUT = dict(
  input_mean=tuple(round(255.0 * m, 6) for m in reversed(OFFICIAL_BGR_MEAN)),
  input_std=tuple(round(255.0 * s, 6) for s in reversed(OFFICIAL_BGR_STD)),
  input_channel_order="BGR",
)
# Number of blocks in stage 3 -> ModelConfig.backbone_depth.
DEPTH_BY_STAGE3_BLOCKS = {blocks[2]: depth for depth, blocks in backbones.STAGE_BLOCKS.items()}
# Prefixes of the keys that make up the descriptor network: an unmatched key under
# one of them means the checkpoint's structure differs from the model we build.
NETWORK_PREFIXES = ("globalmodel.", "localmodel.", "pool_g.", "fc_t.", "fc.")


def _block_count(state: Mapping[str, np.ndarray], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"b(\d+)\.")
  indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
  return max(indices, default=0)


def require_tensor(state: Mapping[str, np.ndarray], key: str, rank: int, source: str) -> np.ndarray:
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
  stem = require_tensor(state, "globalmodel.stem.conv.weight", 4, source)
  fc_t = require_tensor(state, "fc_t.weight", 2, source)
  fc = require_tensor(state, "fc.weight", 2, source)
  if fc.shape[1] != 2 * fc_t.shape[0]:  # fc sees [f_g, f_o], both of fc_t's output size.
    raise ValueError(
      f"{source}: shape mismatch for 'fc.weight': expected ({fc.shape[0]}, "
      f"{2 * fc_t.shape[0]}), found {tuple(fc.shape)}"
    )
  use_multi_atrous = any(key.startswith("localmodel.aspp.") for key in state)
  dilations = tuple(atrous_dilations or config_sections.OFFICIAL_DILATIONS)
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
