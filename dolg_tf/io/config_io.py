"""Loading and validating DolgConfig extraction configs (protos/dolg_config.proto).

    config = config_io.load_dolg_config("protos/dolg.pbtxt")
    model_dir = config_io.resolve_model_path(config, "protos/dolg.pbtxt")

DELF's DelfConfig files (protos/delf_config.proto, e.g. DELF's
delg/r50delg_gldv2clean_config.pbtxt) load too: `load_delf_config` translates
one into a DolgConfig (`delf_to_dolg_config`), and `load_any_config` takes a
file of either kind (what extract_features --config uses).

Every error is one line naming the file and, where it applies, the line or the
field, e.g. `protos/x.pbtxt:3:1: Message type "dolg_tf.protos.DolgConfig" has no
field named "modle_path".` or `protos/x.pbtxt: image_scales[1]: must be a
positive finite number, got -1.0`.
"""

import math
import os
from collections.abc import Callable

from google.protobuf import text_format

from dolg_tf import protos
from dolg_tf.io import image_pyramid
from dolg_tf.protos import delf_config_pb2, dolg_config_pb2
from dolg_tf.utils import files as file_utils

DolgConfig = dolg_config_pb2.DolgConfig
DelfConfig = delf_config_pb2.DelfConfig

# The folder holding the dolg_tf package and protos/ (the repository root in a
# checkout, the workspace folder in Bazel runfiles).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The shipped example configs (protos/*.pbtxt, copied into the package by the build).
DOLG_CONFIG_PATH = protos.shipped_config_path("dolg")
DELG_CONFIG_PATH = protos.shipped_config_path("delg")


def parse_dolg_config(text: str, source: str = "<string>") -> DolgConfig:
  """Parses and validates a DolgConfig in text format.

  Args:
    text: the text-format config.
    source: name used in error messages (normally the file path).

  Returns:
    The validated DolgConfig.

  Raises:
    ValueError: `source:line:column: reason` on a parse error (unknown field,
      bad value), `source: field: reason` when validation fails.
  """
  config = _parse_text(text, DolgConfig(), source)
  validate_dolg_config(config, source)
  return config


def _parse_text(text: str, config, source: str):
  """Parses text-format `text` into `config`; a ParseError becomes a one-line ValueError."""
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    reason = str(e)
    line, column = e.GetLine(), e.GetColumn()
    prefix = f"{line}:{column} : "
    if reason.startswith(prefix):
      reason = reason[len(prefix) :]
    where = f"{source}:{line}:{column}" if line is not None else source
    raise ValueError(f"{where}: {' '.join(reason.split())}") from e
  return config


def load_dolg_config(path: str) -> DolgConfig:
  """Loads and validates a DolgConfig text file (.pbtxt).

  Args:
    path: the config file.

  Returns:
    The validated DolgConfig.

  Raises:
    FileNotFoundError: naming `path`, if it does not exist.
    ValueError: naming `path` and the line or field, if it does not parse or
      validate.
  """
  path = os.fspath(path)
  return parse_dolg_config(_read_text(path), path)


def _read_text(path: str) -> str:
  data = file_utils.read_bytes(path)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from e


def _is_positive_finite(value: float) -> bool:
  return math.isfinite(value) and value > 0


def _validate_pca(pca: DolgConfig.PcaParameters, field: str) -> list[str]:
  errors = []
  for name in ("mean_path", "projection_matrix_path"):
    if not getattr(pca, name):
      errors.append(f"{field}.{name}: required when use_pca is true")
  if pca.pca_dim <= 0:
    errors.append(f"{field}.pca_dim: must be positive when use_pca is true, got {pca.pca_dim}")
  if pca.use_whitening and not pca.pca_variances_path:
    errors.append(f"{field}.pca_variances_path: required when use_whitening is true")
  return errors


def config_errors(config: DolgConfig) -> list[str]:
  """Returns every problem found in `config`, each as `field: reason` (empty if valid)."""
  errors = []
  if not config.use_global_features and not config.use_local_features:
    errors.append("use_global_features, use_local_features: both false, nothing to extract")

  # An empty image_scales is valid: the extractor takes the SavedModel's pyramid
  # (and checks global_config.image_scales_ind against it).
  scales = list(config.image_scales)
  for i, scale in enumerate(scales):
    if not _is_positive_finite(scale):
      errors.append(f"image_scales[{i}]: must be a positive finite number, got {scale}")

  for name in ("max_image_size", "min_image_size"):
    value = getattr(config, name)
    if value != -1 and value <= 0:
      errors.append(f"{name}: must be positive or -1 (no limit), got {value}")
  if 0 < config.max_image_size < config.min_image_size:
    errors.append(
      f"min_image_size: {config.min_image_size} exceeds max_image_size {config.max_image_size}"
    )
  errors.extend(image_pyramid.pyramid_errors(config))

  if config.use_global_features:
    global_config = config.global_config
    seen = set()
    for i, index in enumerate(global_config.image_scales_ind):
      if index < 0 or (scales and index >= len(scales)):
        pyramid = f"{len(scales)} image_scales" if scales else "any pyramid (negative)"
        errors.append(f"global_config.image_scales_ind[{i}]: {index} is out of range for {pyramid}")
      elif index in seen:
        errors.append(f"global_config.image_scales_ind[{i}]: {index} is repeated")
      seen.add(index)
    if global_config.use_pca:
      errors.extend(_validate_pca(global_config.pca_parameters, "global_config.pca_parameters"))
    pooling = global_config.scale_pooling
    gem_poolings = (DolgConfig.GlobalConfig.GEM, DolgConfig.GlobalConfig.SCALE_GEM)
    if pooling in gem_poolings and not _is_positive_finite(global_config.gem_p):
      name = DolgConfig.GlobalConfig.ScalePooling.Name(pooling)
      errors.append(f"global_config.gem_p: must be positive for {name}, got {global_config.gem_p}")
    if global_config.HasField("gem_plus_p") and not (
      math.isfinite(global_config.gem_plus_p) and global_config.gem_plus_p >= 0
    ):
      errors.append(
        f"global_config.gem_plus_p: must be >= 0 (0 = trained p), got {global_config.gem_plus_p}"
      )
    if global_config.HasField("regional_gem_weight") and not (
      0 <= global_config.regional_gem_weight <= 1
    ):
      errors.append(
        "global_config.regional_gem_weight: must be in [0, 1], got "
        f"{global_config.regional_gem_weight}"
      )
    if not config.global_descriptor_suffix:
      errors.append("global_descriptor_suffix: must not be empty")

  if config.use_local_features:
    local_config = config.local_config
    if local_config.max_feature_num <= 0:
      errors.append(
        f"local_config.max_feature_num: must be positive, got {local_config.max_feature_num}"
      )
    if not math.isfinite(local_config.score_threshold):
      errors.append(
        f"local_config.score_threshold: must be finite, got {local_config.score_threshold}"
      )
    if local_config.use_pca:
      errors.extend(_validate_pca(local_config.pca_parameters, "local_config.pca_parameters"))
    if not config.local_descriptor_suffix:
      errors.append("local_descriptor_suffix: must not be empty")
    elif config.use_global_features and (
      config.local_descriptor_suffix == config.global_descriptor_suffix
    ):
      errors.append(
        f"local_descriptor_suffix: same as global_descriptor_suffix "
        f"({config.local_descriptor_suffix!r}); the files would overwrite each other"
      )
  return errors


def validate_dolg_config(config: DolgConfig, source: str = "<config>") -> None:
  """Checks that `config` is usable for extraction.

  Rules: at least one of global/local features on; image_scales positive and
  finite (empty: the SavedModel's pyramid, see extraction/extractor.py);
  max/min_image_size positive or -1 and min <= max when both are set;
  max_image_size x each scale within the input sides the network may see
  (image_pyramid.pyramid_errors); global
  image_scales_ind non-negative, in range of image_scales when it is given,
  and not repeated; gem_p > 0
  with GEM pooling; PCA mean/projection paths, pca_dim > 0 (and variances
  path with whitening) when use_pca; local max_feature_num > 0 and finite
  score_threshold; descriptor suffixes non-empty and distinct.

  Args:
    config: the config to check.
    source: name used in the error message (normally the file path).

  Raises:
    ValueError: `source: field: reason` for the first problem found (the
      number of further problems is appended).
  """
  errors = config_errors(config)
  if errors:
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    raise ValueError(f"{source}: {errors[0]}{more}")


def resolve_path(
  path: str,
  field: str = "path",
  config_path: str | None = None,
  must_exist: bool = True,
  config_folder_first: bool = False,
  exists: Callable[[str], bool] = os.path.exists,
) -> str:
  """Resolves a path from a config with the DolgConfig rule.

  Absolute paths (after `~` expansion) are kept. A relative path is looked up
  against the current working directory first, then against REPO_ROOT.

  Args:
    path: the path from the config.
    field: the config field, for error messages.
    config_path: the config file, for error messages.
    must_exist: if False, a path found nowhere resolves against the first
      place looked at instead of raising.
    config_folder_first: look in the config file's folder before the others
      (files written next to their config, e.g. a codebook).
    exists: whether a candidate counts as found (default os.path.exists).

  Returns:
    An absolute path.

  Raises:
    ValueError: if `path` is empty.
    FileNotFoundError: if `must_exist` and the path exists in neither place.
  """
  source = config_path or "<config>"
  if not path:
    raise ValueError(f"{source}: {field}: not set")
  expanded = os.path.expanduser(path)
  if os.path.isabs(expanded):
    candidates = [expanded]
  else:
    candidates = [os.path.abspath(expanded), os.path.join(REPO_ROOT, expanded)]
    if config_folder_first and config_path:
      candidates.insert(0, os.path.join(os.path.dirname(os.path.abspath(config_path)), expanded))
    candidates = list(dict.fromkeys(os.path.normpath(c) for c in candidates))
  for candidate in candidates:
    if exists(candidate):
      return candidate
  if must_exist:
    raise FileNotFoundError(
      f"{source}: {field}: {path!r} not found (looked for {' and '.join(candidates)})"
    )
  return candidates[0]


def resolve_model_path(
  config: DolgConfig, config_path: str | None = None, must_exist: bool = True
) -> str:
  """Returns the absolute SavedModel path of `config.model_path` (see resolve_path).

  Args:
    config: the extraction config.
    config_path: the file it was loaded from, for error messages.
    must_exist: if False, do not require the model to exist yet.

  Raises:
    ValueError: if model_path is not set.
    FileNotFoundError: if `must_exist` and the model is not found.
  """
  return resolve_path(config.model_path, "model_path", config_path, must_exist)


# DELF DelfConfig -> DolgConfig field names, for error messages.
_DELF_FIELD_NAMES = (
  ("global_config.", "delf_global_config."),
  ("local_config.", "delf_local_config."),
)
# Text that marks a .pbtxt as a DelfConfig when it parses as neither message.
_DELF_MARKERS = ("DelfConfig", "delf_local_config", "delf_global_config", "is_tf2_exported")


def _copy_pca(source: delf_config_pb2.DelfPcaParameters, target: DolgConfig.PcaParameters) -> None:
  for name in ("mean_path", "projection_matrix_path", "pca_dim", "use_whitening"):
    setattr(target, name, getattr(source, name))
  if source.pca_variances_path:
    target.pca_variances_path = source.pca_variances_path


def delf_to_dolg_config(delf_config: DelfConfig, source: str = "<config>") -> DolgConfig:
  """Translates DELF's DelfConfig into the DolgConfig that extracts the same features.

  Mapping: model_path, image_scales, max/min_image_size, use_square_images,
  use_local_features and use_global_features are copied (with DELF's
  defaults: local on, global off); delf_local_config's use_pca,
  pca_parameters, max_feature_num, score_threshold and
  use_resized_coordinates go to local_config; delf_global_config's
  image_scales_ind, use_pca and pca_parameters go to global_config with
  pca_per_scale (DELF's per-scale PCA, then sum and L2) and AVERAGE pooling;
  the output suffixes are DELG's `.delg_global` / `.delg_local`.
  is_tf2_exported is not needed: the model is always run through its
  serving_default signature (a TF1 SavedModel without one is refused, naming
  the signature, when the extractor loads it).

  Args:
    delf_config: the DelfConfig.
    source: name used in error messages (normally the file path).

  Returns:
    The validated DolgConfig.

  Raises:
    ValueError: `source: field(s): reason` for DELF fields this project does
      not implement (delf_local_config.layer_name, iou_threshold below 1, i.e.
      non-max suppression) or a translated config that fails validation (named
      with DELF's field names).
  """
  local = delf_config.delf_local_config
  unsupported = []
  if local.layer_name:
    unsupported.append("delf_local_config.layer_name")
  if local.iou_threshold < 1.0:
    unsupported.append("delf_local_config.iou_threshold")
  if unsupported:
    raise ValueError(
      f"{source}: {', '.join(unsupported)}: not supported by dolg_tf "
      "(DELF v1 receptive fields / non-max suppression); remove them"
    )
  config = DolgConfig(
    model_path=delf_config.model_path,
    image_scales=list(delf_config.image_scales),
    max_image_size=delf_config.max_image_size,
    min_image_size=delf_config.min_image_size,
    use_square_images=delf_config.use_square_images,
    use_local_features=delf_config.use_local_features,
    use_global_features=delf_config.use_global_features,
    global_descriptor_suffix=".delg_global",
    local_descriptor_suffix=".delg_local",
  )
  local_config = config.local_config
  local_config.use_pca = local.use_pca
  if local.use_pca:
    _copy_pca(local.pca_parameters, local_config.pca_parameters)
  local_config.max_feature_num = local.max_feature_num
  local_config.score_threshold = local.score_threshold
  local_config.use_resized_coordinates = local.use_resized_coordinates

  delf_global = delf_config.delf_global_config
  global_config = config.global_config
  global_config.image_scales_ind.extend(delf_global.image_scales_ind)
  global_config.use_pca = delf_global.use_pca
  if delf_global.use_pca:
    _copy_pca(delf_global.pca_parameters, global_config.pca_parameters)
  global_config.pca_per_scale = True
  global_config.scale_pooling = DolgConfig.GlobalConfig.AVERAGE

  errors = config_errors(config)
  if errors:
    first = errors[0]
    for ours, delf in _DELF_FIELD_NAMES:
      first = first.replace(ours, delf)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    raise ValueError(f"{source}: {first}{more} (DelfConfig)")
  return config


def parse_delf_config(text: str, source: str = "<string>") -> DolgConfig:
  """Parses a DELF DelfConfig in text format and translates it (delf_to_dolg_config).

  Raises:
    ValueError: one line naming `source` and the line or field.
  """
  return delf_to_dolg_config(_parse_text(text, DelfConfig(), source), source)


def load_delf_config(path: str) -> DolgConfig:
  """Loads a DELF DelfConfig text file (.pbtxt) as a DolgConfig (delf_to_dolg_config).

  Raises:
    FileNotFoundError: naming `path`, if it does not exist.
    ValueError: naming `path` and the line or field.
  """
  path = os.fspath(path)
  return parse_delf_config(_read_text(path), path)


def load_any_config(path: str) -> DolgConfig:
  """Loads a DolgConfig or a DELF DelfConfig text file, telling them apart.

  A file that parses as a DolgConfig is one (a file holding only fields both
  messages share, e.g. model_path and image_scales, counts as a DolgConfig);
  else one that parses as a DelfConfig (e.g. it has delf_local_config or
  delf_global_config) is translated with delf_to_dolg_config.

  Args:
    path: the config file.

  Returns:
    The validated DolgConfig.

  Raises:
    FileNotFoundError: naming `path`, if it does not exist.
    ValueError: one line naming `path`: the validation error of the kind it
      parsed as, else the parse error of the kind it looks like (DelfConfig
      if it mentions a DELF-only field, DolgConfig otherwise).
  """
  path = os.fspath(path)
  text = _read_text(path)
  try:
    dolg_config = _parse_text(text, DolgConfig(), path)
  except ValueError as dolg_error:
    try:
      delf_config = _parse_text(text, DelfConfig(), path)
    except ValueError as delf_error:
      if any(marker in text for marker in _DELF_MARKERS):
        raise ValueError(f"{delf_error} (read as a DELF DelfConfig)") from None
      raise dolg_error from None
    return delf_to_dolg_config(delf_config, path)
  validate_dolg_config(dolg_config, path)
  return dolg_config
