"""Global (DOLG) or local + global (DELG) features of images from an exported SavedModel.

    config = config_io.load_dolg_config("protos/dolg.pbtxt")
    extractor = Extractor(config, config_path="protos/dolg.pbtxt")
    descriptor = extractor.extract_from_file("image.jpg")          # float32 [D]

One class for both kinds of config. Only the exported SavedModel is used
(export/export_model.py's signatures, names in io/savedmodel_contract.py); no
model code is imported, so a converted official checkpoint, a trained model
and a TF Serving deployment give the same descriptors.

Global-only extraction (use_local_features false), DELF's order:
  1. `load_image` (RGB uint8), optional crop box (x1, y1, x2, y2), then
     `resize_image` with the config's max/min_image_size and
     use_square_images. This part is pure NumPy/Pillow and thread-safe
     (`load_and_preprocess`), so a pipeline can run it in worker threads.
  2. The global-only signature (`serve_global` of a DELG export, else
     `serving_default`) on the selected global scales (`image_scales[i]` for
     i in `global_config.image_scales_ind`, all scales when empty) returns one
     L2-normalised descriptor per scale.
  3. Scale pooling (`pool_scales`), per `global_config.scale_pooling`:
     AVERAGE: each scale L2-normalised, averaged, L2-normalised (official
       DOLG; equals the signature's own `global_descriptor`).
     GEM: each scale L2-normalised, then a signed generalised mean
       m = mean_s(sign(v_s) * |v_s|^p), g = sign(m) * |m|^(1/p),
       L2-normalised. The signed power keeps the mean defined for DOLG's
       signed descriptors (a clamp max(x, eps)^p as in spatial GeM would throw
       away every negative component); p = 1 is AVERAGE, and for large p each
       component tends to the scale value of largest magnitude.
  4. Optional PCA (`apply_pca`), DELF's ApplyPcaAndWhitening:
     y = P[:pca_dim] @ (x - mean), with whitening y /= sqrt(var[:pca_dim] + eps),
     then L2-normalised. With `global_config.pca_per_scale` (DELF's order, set
     for translated DelfConfigs) PCA comes before step 3 instead: each scale's
     L2-normalised descriptor is projected and L2-normalised, then pooled
     (AVERAGE = DELF's sum over scales and L2 normalisation).
  `extract` returns the float32 [D] descriptor.

Local + global extraction (use_local_features true, a DELG export): DELF's
local+global `serving_default` on the whole pyramid, local features post-
processed as local_extractor.py describes; `extract` returns a dict and
`make_writer` gives pipeline.run_extraction the writer of its two files.

Defaults from the SavedModel. When the config leaves `image_scales` empty, or
does not set `max_image_size` / `min_image_size`, the values come from the
export's `assets.extra/config.json` (savedmodel_contract.CONFIG_ASSET, its "export"
section), or from `assets.extra/export_config.json` of older exports
(`read_export_defaults`); the config is then validated again with them
(`resolve_config`), e.g. `global_config.image_scales_ind` against the pyramid.
"""

import json
import os

import numpy as np
import tensorflow as tf
from absl import logging

from dolg_tf.extraction import local_extractor
from dolg_tf.io import config_io, datum_io, image_loading, savedmodel_contract
from dolg_tf.utils import arrays

DolgConfig = config_io.DolgConfig
ScalePooling = DolgConfig.GlobalConfig

# Added to the PCA variances before the square root when whitening.
WHITENING_EPSILON = 1e-12
# The extraction defaults of exports written before savedmodel_contract.CONFIG_ASSET.
LEGACY_EXPORT_CONFIG_ASSET = "assets.extra/export_config.json"
# DolgConfig fields an export can supply.
EXPORT_DEFAULT_FIELDS = ("image_scales", "max_image_size", "min_image_size")
# export.<field> -> (GlobalConfig field overriding it, SavedModel variable), for
# SuperGlobal's GeM+ and Regional-GeM.
EXPORT_TEST_TIME_FIELDS = {
  "superglobal_gem_p": ("gem_plus_p", savedmodel_contract.GEM_PLUS_P),
  "regional_gem_weight": ("regional_gem_weight", savedmodel_contract.REGIONAL_GEM_WEIGHT),
}
# export.scale_pooling -> the GlobalConfig.scale_pooling it defaults to.
EXPORT_SCALE_POOLINGS = {"average": ScalePooling.AVERAGE, "max": ScalePooling.MAX}


def pool_scales(per_scale: np.ndarray, method: int = ScalePooling.AVERAGE, p: float = 3.0):
  """Combines per-scale descriptors [S, D] into one L2-normalised descriptor [D].

  Args:
    per_scale: float [S, D] descriptors, one row per scale.
    method: `DolgConfig.GlobalConfig.AVERAGE`, `GEM`, `MAX` or `SCALE_GEM`
      (see the module doc).
    p: GEM / SCALE_GEM exponent (> 0).

  Returns:
    float32 [D].

  Raises:
    ValueError: unknown method, non-positive p or no scales.
  """
  per_scale = np.asarray(per_scale, dtype=np.float64)
  if per_scale.ndim != 2 or per_scale.shape[0] == 0:
    raise ValueError(f"expected per-scale descriptors [S>0, D], got shape {per_scale.shape}")
  normalized = arrays.l2_normalize(per_scale, axis=1, dtype=np.float64)
  if method == ScalePooling.AVERAGE:
    pooled = normalized.mean(axis=0)
  elif method == ScalePooling.GEM:
    if not p > 0:
      raise ValueError(f"GEM scale pooling needs p > 0, got {p}")
    m = np.mean(np.sign(normalized) * np.abs(normalized) ** p, axis=0)
    pooled = np.sign(m) * np.abs(m) ** (1.0 / p)
  elif method == ScalePooling.MAX:
    pooled = normalized.max(axis=0)
  elif method == ScalePooling.SCALE_GEM:
    if not p > 0:
      raise ValueError(f"SCALE_GEM scale pooling needs p > 0, got {p}")
    gamma = normalized.min()
    pooled = np.mean((normalized - gamma) ** p, axis=0) ** (1.0 / p) + gamma
  else:
    raise ValueError(f"unknown scale pooling {method}")
  return arrays.l2_normalize(pooled.astype(np.float32))


def apply_pca(
  x: np.ndarray,
  mean: np.ndarray,
  projection: np.ndarray,
  pca_dim: int,
  variances: np.ndarray | None = None,
  epsilon: float = WHITENING_EPSILON,
) -> np.ndarray:
  """DELF's ApplyPcaAndWhitening followed by L2 normalisation.

  Args:
    x: float [D] or [N, D] descriptors.
    mean: float [D].
    projection: float [K, D], rows = principal directions (K >= pca_dim).
    pca_dim: number of rows kept.
    variances: float [>= pca_dim] to whiten with, or None (no whitening).
    epsilon: added to the variances before the square root.

  Returns:
    float32 [pca_dim] or [N, pca_dim], L2-normalised.
  """
  x = np.asarray(x, dtype=np.float64)
  projected = (x - mean) @ np.asarray(projection[:pca_dim], dtype=np.float64).T
  if variances is not None:
    projected = projected / np.sqrt(np.asarray(variances[:pca_dim], dtype=np.float64) + epsilon)
  return arrays.l2_normalize(projected.astype(np.float32))


class NonFiniteDescriptorError(ValueError):
  """The model gave NaN or inf descriptor values for an image (nothing is returned)."""


def refuse_non_finite(values: np.ndarray, what: str, image: np.ndarray) -> None:
  """Raises NonFiniteDescriptorError if float `values` hold NaN or inf.

  Args:
    values: a descriptor (or descriptors) of `image`.
    what: what `values` are, for the message ('global descriptor', ...).
    image: the input image, named by its size in the message.
  """
  values = np.asarray(values)
  if values.dtype.kind != "f":
    return
  bad = int(np.count_nonzero(~np.isfinite(values)))
  if bad:
    size = "x".join(str(d) for d in np.shape(image)[:2])
    raise NonFiniteDescriptorError(
      f"non-finite {what}: {bad} of {values.size} values are NaN or inf (the {size} input image)"
    )


def _load_array(path: str) -> np.ndarray:
  if path.endswith(".npy"):
    try:
      return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise OSError(f"{path}: cannot read .npy file ({e})") from e
  return datum_io.read_from_file(path)


class PcaProjection:
  """PCA (+ optional whitening) parameters read from .npy or DatumProto files."""

  def __init__(
    self,
    parameters: DolgConfig.PcaParameters,
    config_path: str | None = None,
    field: str = "global_config.pca_parameters",
  ):
    """Loads the files named in `parameters` (`field` of the config, for errors).

    Raises:
      FileNotFoundError / IOError: a file is missing or unreadable (named).
      ValueError: inconsistent shapes (the file is named).
    """
    resolve = lambda name: config_io.resolve_path(
      getattr(parameters, name), f"{field}.{name}", config_path
    )
    self.mean_path = resolve("mean_path")
    self.projection_path = resolve("projection_matrix_path")
    self.mean = _load_array(self.mean_path).astype(np.float32)
    self.projection = _load_array(self.projection_path).astype(np.float32)
    self.pca_dim = int(parameters.pca_dim)
    self.variances = None
    self.variances_path = None
    if self.mean.ndim != 1:
      raise ValueError(f"{self.mean_path}: PCA mean must be 1-D, got shape {self.mean.shape}")
    dim = self.mean.shape[0]
    if self.projection.ndim != 2 or self.projection.shape[1] != dim:
      raise ValueError(
        f"{self.projection_path}: PCA projection must be [K, {dim}], "
        f"got shape {self.projection.shape}"
      )
    if self.pca_dim > self.projection.shape[0]:
      raise ValueError(
        f"{self.projection_path}: pca_dim {self.pca_dim} exceeds the "
        f"{self.projection.shape[0]} rows of the projection"
      )
    if parameters.use_whitening:
      self.variances_path = resolve("pca_variances_path")
      self.variances = _load_array(self.variances_path).astype(np.float32).ravel()
      if self.variances.shape[0] < self.pca_dim:
        raise ValueError(
          f"{self.variances_path}: {self.variances.shape[0]} variances, "
          f"fewer than pca_dim {self.pca_dim}"
        )
      if np.any(self.variances[: self.pca_dim] < 0):
        raise ValueError(f"{self.variances_path}: negative PCA variances")

  @property
  def input_dim(self) -> int:
    return int(self.mean.shape[0])

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[-1] != self.input_dim:
      raise ValueError(
        f"{self.mean_path}: PCA expects {self.input_dim}-D descriptors, got {x.shape[-1]}-D"
      )
    return apply_pca(x, self.mean, self.projection, self.pca_dim, self.variances)


def read_export_defaults(model_path: str | None) -> tuple[dict, str | None]:
  """The extraction defaults an export records, and the file they came from.

  Reads the "export" section of `<model_path>/assets.extra/config.json`
  (savedmodel_contract.CONFIG_ASSET), or else `<model_path>/assets.extra/export_config.json`
  (older exports). Only the fields of EXPORT_DEFAULT_FIELDS are returned:
  image_scales (list of float), max_image_size and min_image_size (int, -1 = no limit);
  and scale_pooling (a GlobalConfig.ScalePooling), superglobal_gem_p and
  regional_gem_weight (float) when the export records them.

  Args:
    model_path: the SavedModel folder, or None.

  Returns:
    ({field: value}, path of the file read), or ({}, None) if there is none.

  Raises:
    ValueError: the file is not JSON or a field has the wrong type (both named).
  """
  if not model_path:
    return {}, None
  for asset, section in (
    (savedmodel_contract.CONFIG_ASSET, "export"),
    (LEGACY_EXPORT_CONFIG_ASSET, None),
  ):
    path = os.path.join(model_path, asset)
    if not tf.io.gfile.exists(path):
      continue
    try:
      with tf.io.gfile.GFile(path, "r") as f:
        payload = json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: not a JSON file ({e})") from e
    if section is not None:
      payload = payload.get(section, {}) if isinstance(payload, dict) else None
    if not isinstance(payload, dict):
      raise ValueError(f"{path}: expected a JSON object{f' {section!r}' if section else ''}")
    defaults = {}
    for name in EXPORT_DEFAULT_FIELDS + ("scale_pooling",) + tuple(EXPORT_TEST_TIME_FIELDS):
      value = payload.get(name)
      if value is None:
        continue
      where = f"{path}: {section + '.' if section else ''}{name}"
      if name in EXPORT_TEST_TIME_FIELDS:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
          raise ValueError(f"{where}: expected a number, got {value!r}")
        defaults[name] = float(value)
      elif name == "scale_pooling":
        if value not in EXPORT_SCALE_POOLINGS:
          choices = sorted(EXPORT_SCALE_POOLINGS)
          raise ValueError(f"{where}: expected one of {choices}, got {value!r}")
        defaults[name] = EXPORT_SCALE_POOLINGS[value]
      elif name == "image_scales":
        if not isinstance(value, list) or not all(
          isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
          raise ValueError(f"{where}: expected a list of numbers, got {value!r}")
        defaults[name] = [float(v) for v in value]
      else:
        if not isinstance(value, int) or isinstance(value, bool):
          raise ValueError(f"{where}: expected an integer, got {value!r}")
        defaults[name] = value
    return defaults, path
  return {}, None


def export_interface_version(model_path: str | None) -> int | None:
  """savedmodel_contract.INTERFACE_VERSION of this project's export at `model_path`.

  1 for this project's exports that predate the key; None when the folder has
  no config asset (e.g. a DELF export, which follows DELF's conventions).
  """
  if not model_path:
    return None
  path = os.path.join(model_path, savedmodel_contract.CONFIG_ASSET)
  if not tf.io.gfile.exists(path):
    legacy = tf.io.gfile.exists(os.path.join(model_path, LEGACY_EXPORT_CONFIG_ASSET))
    return 1 if legacy else None
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      payload = json.loads(f.read())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a JSON file ({e})") from e
  version = payload.get(savedmodel_contract.INTERFACE_KEY, 1) if isinstance(payload, dict) else 1
  if not isinstance(version, int) or isinstance(version, bool):
    raise ValueError(
      f"{path}: {savedmodel_contract.INTERFACE_KEY}: expected an integer, got {version!r}"
    )
  return version


def resolve_config(
  config: DolgConfig, config_path: str | None = None, model_path: str | None = None
) -> DolgConfig:
  """`config` with the fields it leaves unset taken from the SavedModel, validated again.

  image_scales (when empty), max_image_size and min_image_size (when not set,
  proto2 presence) come from `read_export_defaults(model_path)`; which ones
  did is logged.

  Args:
    config: a validated DolgConfig (image_scales may be empty).
    config_path: the file `config` came from (named in errors).
    model_path: the SavedModel folder (None: nothing to take from it).

  Returns:
    A new DolgConfig; `config` is not changed.

  Raises:
    ValueError: neither gives an image pyramid, the export's values are bad, or
      the completed config does not validate (e.g. image_scales_ind out of
      range of the SavedModel's pyramid); one line naming the file and field.
  """
  source = config_path or "<config>"
  resolved = DolgConfig()
  resolved.CopyFrom(config)
  defaults, defaults_path = read_export_defaults(model_path)
  taken = []
  if not resolved.image_scales and "image_scales" in defaults:
    resolved.image_scales.extend(defaults["image_scales"])
    taken.append(f"image_scales={list(resolved.image_scales)}")
  for name in ("max_image_size", "min_image_size"):
    if not resolved.HasField(name) and name in defaults:
      setattr(resolved, name, defaults[name])
      taken.append(f"{name}={defaults[name]}")
  pooling = defaults.get("scale_pooling", ScalePooling.AVERAGE)
  if not resolved.global_config.HasField("scale_pooling") and pooling != ScalePooling.AVERAGE:
    resolved.global_config.scale_pooling = pooling
    taken.append(f"global_config.scale_pooling={ScalePooling.ScalePooling.Name(pooling)}")
  if not resolved.image_scales:
    where = (
      f"{defaults_path} has none" if defaults_path else f"no {savedmodel_contract.CONFIG_ASSET}"
    )
    raise ValueError(
      f"{source}: image_scales: empty, and the SavedModel gives no pyramid "
      f"({model_path or '<loaded SavedModel>'}: {where})"
    )
  if taken:
    logging.info("%s: %s from the SavedModel's %s", source, ", ".join(taken), defaults_path)
  source_desc = f"{source} (with {defaults_path})" if taken else source
  config_io.validate_dolg_config(resolved, source_desc)
  return resolved


def set_test_time_options(loaded, config: DolgConfig, model_path: str | None, source: str):
  """Sets the SavedModel's GeM+ / Regional-GeM variables for `config`.

  A value the config's global_config sets wins; otherwise the export's own
  (its config asset), so that a SavedModel object shared by several
  extractors never keeps another config's values.

  Raises:
    ValueError: the config sets one but the SavedModel has no such variable
      (a frozen export, or not one of this project's), named.
  """
  defaults, _ = read_export_defaults(model_path)
  global_config = config.global_config
  for export_field, (field, attribute) in EXPORT_TEST_TIME_FIELDS.items():
    variable = getattr(loaded, attribute, None)
    if global_config.HasField(field):
      value = getattr(global_config, field)
      if not isinstance(variable, tf.Variable):
        raise ValueError(
          f"{source}: global_config.{field}: {model_path or '<loaded SavedModel>'} has no "
          f"{attribute} variable (exported with freeze_weights, or not by dolg_tf); "
          f"set export.{export_field} and export again instead"
        )
    elif export_field in defaults:
      value = defaults[export_field]
    else:
      continue
    if isinstance(variable, tf.Variable):
      variable.assign(value)


def load_saved_model(model_path: str, source: str = "<config>"):
  """tf.saved_model.load, with a damaged SavedModel reported as one ValueError naming it.

  A truncated variables file, say, surfaces from TF as an IndexError or an
  OpError deep inside the checkpoint reader.
  """
  try:
    return tf.saved_model.load(model_path)
  except (IndexError, KeyError, ValueError, OSError, tf.errors.OpError) as e:
    reason = " ".join(str(e).split())[:300]
    raise ValueError(
      f"{model_path}: cannot load the SavedModel (model_path in {source}): "
      f"{type(e).__name__}: {reason}"
    ) from e


class Extractor:
  """Global (DOLG) or local + global (DELG) extraction with a SavedModel, per a DolgConfig.

  The pipeline.run_extraction extractor protocol: `load_and_preprocess` is
  thread-safe and TF-free; `extract` runs the model; `extract_batch` runs it
  once for images of one size (the export's batched signature); `make_writer`
  gives the DELG writer (None for global-only extraction, which the pipeline
  writes).

  Attributes:
    config: the DolgConfig in use, completed from the SavedModel (resolve_config).
    local: whether local features are extracted (config.use_local_features).
    model_path: the SavedModel folder (None for a loaded SavedModel without a path).
    signature_name: the signature run.
    batch_signature_name: the batched signature `extract_batch` runs
      (savedmodel_contract.SERVE_GLOBAL_BATCH / SERVE_LOCAL_BATCH), or None for exports
      without it (older exports of this project, DELF's): `extract_batch` then
      runs the images one by one.
    image_scales: the whole pyramid, float32 [S].
    scales: the scales given to the signature, float32: the global scales for
      global-only extraction, the whole pyramid for DELG.
    suffix / global_suffix / local_suffix: output file suffixes.
  """

  def __init__(
    self,
    config: DolgConfig,
    config_path: str | None = None,
    model_path: str | None = None,
    saved_model=None,
  ):
    """Loads the SavedModel and the PCA files.

    Args:
      config: a validated DolgConfig (config_io.load_dolg_config).
      config_path: the file `config` came from: names it in errors; relative
        paths resolve as config_io.resolve_path does.
      model_path: overrides `config.model_path` (already resolved).
      saved_model: an already loaded SavedModel (`tf.saved_model.load`) to use
        instead of loading the model again; its defaults are still read from
        `model_path` / `config.model_path` when that folder exists.

    Raises:
      ValueError: nothing to extract, no image pyramid, a field out of range of
        the SavedModel's pyramid, or the SavedModel lacks the signature the
        config needs (named).
      FileNotFoundError: the model or a PCA file is missing (named).
    """
    source = config_path or "<config>"
    self.local = bool(config.use_local_features)
    if not self.local and not config.use_global_features:
      raise ValueError(f"{source}: use_global_features is false, nothing to extract")
    if saved_model is not None:
      if model_path is None and config.model_path:
        model_path = config_io.resolve_model_path(config, config_path, must_exist=False)
      self._loaded = saved_model
    else:
      model_path = model_path or config_io.resolve_model_path(config, config_path)
      if not os.path.exists(os.path.join(model_path, "saved_model.pb")):
        raise FileNotFoundError(f"{model_path}: no saved_model.pb (model_path in {source})")
      self._loaded = load_saved_model(model_path, source)
    self.model_path = model_path
    self.config = config = resolve_config(config, config_path, model_path)
    name = model_path or "<loaded SavedModel>"
    if config.use_global_features:
      set_test_time_options(self._loaded, config, model_path, source)

    if self.local:
      candidates, expected = (
        [savedmodel_contract.SERVING_DEFAULT],
        savedmodel_contract.LOCAL_GLOBAL_INPUTS,
      )
    else:
      candidates, expected = (
        list(savedmodel_contract.GLOBAL_SIGNATURES),
        savedmodel_contract.GLOBAL_INPUTS,
      )
    available = [n for n in candidates if n in self._loaded.signatures]
    if not available:
      raise ValueError(
        f"{name}: SavedModel has no signature {' or '.join(candidates)}; "
        f"it has {sorted(self._loaded.signatures)}"
      )
    self.signature_name = available[0]
    self._signature = self._loaded.signatures[self.signature_name]
    inputs = set(self._signature.structured_input_signature[1])
    if inputs != expected:
      kind = "DELG's local+global" if self.local else "the global-only"
      raise ValueError(
        f"{name}: signature {self.signature_name} takes {sorted(inputs)}, not {kind} "
        f"inputs {sorted(expected)}" + (" (is it a DELG export?)" if self.local else "")
      )
    batch_name, batch_inputs = (
      (savedmodel_contract.SERVE_LOCAL_BATCH, savedmodel_contract.BATCH_LOCAL_GLOBAL_INPUTS)
      if self.local
      else (savedmodel_contract.SERVE_GLOBAL_BATCH, savedmodel_contract.BATCH_GLOBAL_INPUTS)
    )
    self._batch_signature = self._loaded.signatures.get(batch_name)
    if self._batch_signature is not None:
      batch_found = set(self._batch_signature.structured_input_signature[1])
      if batch_found != batch_inputs:
        raise ValueError(
          f"{name}: signature {batch_name} takes {sorted(batch_found)}, not {sorted(batch_inputs)}"
        )
    self.batch_signature_name = batch_name if self._batch_signature is not None else None

    self.image_scales = np.array(config.image_scales, dtype=np.float32)
    global_config = config.global_config
    indices = list(global_config.image_scales_ind) or list(range(len(self.image_scales)))
    # The scales the global descriptor pools (each must see at least MIN_IMAGE_SIZE px).
    self.global_scales = self.image_scales[indices]
    if self.local:
      self.scales = self.image_scales
      self._global_scale_indices = tf.constant(np.array(indices, dtype=np.int32))
    else:
      # Only the scales pooled into the global descriptor are computed.
      self.scales = self.image_scales[indices]
      self._global_scale_indices = tf.constant(np.arange(len(indices), dtype=np.int32))
    self._scales_tensor = tf.constant(self.scales)
    self.use_global = bool(config.use_global_features)
    self.scale_pooling = global_config.scale_pooling
    self.gem_p = float(global_config.gem_p)
    self.pca_per_scale = bool(global_config.pca_per_scale)
    self.pca = (
      PcaProjection(global_config.pca_parameters, config_path)
      if self.use_global and global_config.use_pca
      else None
    )
    local_config = config.local_config
    self.max_feature_num = int(local_config.max_feature_num)
    self.score_threshold = float(local_config.score_threshold)
    self.use_resized_coordinates = bool(local_config.use_resized_coordinates)
    self.binarize = bool(local_config.binarize)
    self.local_pca = (
      PcaProjection(local_config.pca_parameters, config_path, "local_config.pca_parameters")
      if self.local and local_config.use_pca
      else None
    )
    self.max_image_size = int(config.max_image_size)
    self.min_image_size = int(config.min_image_size)
    self.square = bool(config.use_square_images)
    self.truncate_boxes = config.query_box_rounding == DolgConfig.TRUNCATE
    # Exports of this project before interface version 2 hold s, not 1 / s, in SCALES.
    self._invert_local_scales = self.local and export_interface_version(model_path) == 1
    self.suffix = self.global_suffix = config.global_descriptor_suffix
    self.local_suffix = config.local_descriptor_suffix

  @classmethod
  def from_config_file(cls, config_path: str, **kwargs) -> "Extractor":
    """Loads the config file (a DolgConfig, or DELF's DelfConfig translated) and its model."""
    return cls(config_io.load_any_config(config_path), config_path=config_path, **kwargs)

  @property
  def output_dim(self) -> int | None:
    """Global descriptor dimension after PCA, or None before the first extraction without PCA."""
    if self.pca is not None:
      return self.pca.pca_dim
    return getattr(self, "_dim", None)

  # --------------------------------------------------------------------------- images

  def preprocess(self, image: np.ndarray, box=None):
    """Crops (x1, y1, x2, y2) if `box` is given, then resizes as configured.

    As DELF, a cropped image's max/min_image_size are scaled by
    max(crop side) / max(image side) (utils.ResizeImage's resize_factor).

    Returns:
      The resized uint8 image for global-only extraction; for DELG a
      local_extractor.PreprocessedImage (image and resize factors [sy, sx]).
    """
    resize_factor = 1.0
    if box is not None:
      original_size = max(image.shape[:2])
      image = image_loading.crop_box(image, box, truncate=self.truncate_boxes)
      # DELF scales the size limits with the crop (its extract_features.py).
      resize_factor = max(image.shape[:2]) / original_size
    resized, factors = image_loading.resize_image(
      image, self.max_image_size, self.min_image_size, self.square, resize_factor
    )
    resized = np.ascontiguousarray(resized)
    self.check_pyramid(resized)
    if not self.local:
      return resized
    return local_extractor.PreprocessedImage(resized, np.asarray(factors, np.float32))

  def check_pyramid(self, image: np.ndarray) -> None:
    """Refuses a resized image the network would see at a useless size at some scale.

    The export resizes the image to round(side x scale) at each scale. With a
    global descriptor, both sides must be at least MIN_IMAGE_SIZE px at the
    smallest global scale (DELF's 10 px rule, applied to what the network
    sees); at the largest scale run, the largest side must be at most
    config_io.MAX_INPUT_SIDE px (beyond it a forward needs GBs: e.g. a config
    with max_image_size -1, no limit, and large photos). An image already
    under MIN_IMAGE_SIZE is left to image_loading.check_min_size's message.

    Raises:
      ValueError: one line with the sizes and the scale (the pipeline adds
        the file and records a failure).
    """
    height, width = (int(d) for d in np.shape(image)[:2])
    if min(height, width) < image_loading.MIN_IMAGE_SIZE:
      return
    minimum = image_loading.MIN_IMAGE_SIZE
    if self.use_global and len(self.global_scales):
      scale = float(np.min(self.global_scales))
      sides = [max(round(d * scale), 1) for d in (width, height)]
      if min(sides) < minimum:
        raise ValueError(
          f"image too small for image_scales: {width}x{height} after resizing is "
          f"{sides[0]}x{sides[1]} px at scale {scale:g}; both sides must be at least "
          f"{minimum} px at every global scale, no descriptor written"
        )
    scale = float(np.max(self.scales))
    sides = [round(d * scale) for d in (width, height)]
    if max(sides) > config_io.MAX_INPUT_SIDE:
      raise ValueError(
        f"image too large for image_scales: {width}x{height} after resizing is "
        f"{sides[0]}x{sides[1]} px at scale {scale:g}, over the {config_io.MAX_INPUT_SIDE} px "
        "the network may see; set max_image_size in the config"
      )

  def load_and_preprocess(self, path: str, box=None):
    """`load_image` + `preprocess`. Thread-safe; no TensorFlow.

    Raises:
      images.ImageError: the file cannot be read (named), or the
        crop box is empty.
    """
    return image_loading.load_and_preprocess(
      path, box, self.preprocess, min_size=self.min_input_size
    )

  @property
  def min_input_size(self) -> int:
    """Smallest side (after crop and resize) load_and_preprocess accepts.

    DELF's tiny-image rule: under 10 px it extracts nothing. Local-only
    extraction follows it exactly (`extract` gives an empty feature set, written
    as DELF writes it); with a global descriptor such an image is a failure
    with its reason, since an empty global descriptor would be a silent wrong
    result (DELF's own DELG script stops there: its datum_io refuses the empty
    float64 array).
    """
    return 0 if self.local and not self.use_global else image_loading.MIN_IMAGE_SIZE

  # --------------------------------------------------------------------------- model

  def _inputs(self) -> dict:
    """The signature inputs other than the image(s)."""
    inputs = {
      savedmodel_contract.INPUT_SCALES: self._scales_tensor,
      savedmodel_contract.INPUT_GLOBAL_SCALES_IND: self._global_scale_indices,
    }
    if self.local:
      inputs[savedmodel_contract.INPUT_MAX_FEATURE_NUM] = tf.constant(
        self.max_feature_num, tf.int32
      )
      inputs[savedmodel_contract.INPUT_ABS_THRES] = tf.constant(self.score_threshold, tf.float32)
    return inputs

  @staticmethod
  def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    return image

  def run_model(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """The signature's raw outputs (savedmodel_contract.GLOBAL_DESCRIPTORS, and for DELG
    BOXES, FEATURES, SCALES, SCORES) for a preprocessed uint8 [H, W, 3] image."""
    image = self._check_image(image)
    outputs = self._signature(input_image=tf.constant(image), **self._inputs())
    out = {k: v.numpy() for k, v in outputs.items()}
    # DELF's exports give scores as [N, 1], and a global-only export made with
    # a multi-scale pool type gives one pooled [D] descriptor.
    if savedmodel_contract.SCORES in out:
      out[savedmodel_contract.SCORES] = out[savedmodel_contract.SCORES].reshape([-1])
    pooled = out.get(savedmodel_contract.GLOBAL_DESCRIPTORS)
    if pooled is not None and pooled.ndim == 1:
      out[savedmodel_contract.GLOBAL_DESCRIPTORS] = pooled[None]
    return out

  def run_model_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """`run_model` of each image; images of one size go through one batched forward.

    The batched signature is used when the export has it and there are two
    or more images of one shape; otherwise (or for mixed shapes) the images
    are run one by one. Each result holds what `run_model` returns for that
    image (DELG's padding removed).
    """
    images = [self._check_image(image) for image in images]
    if (
      self._batch_signature is None
      or len(images) < 2
      or any(image.shape != images[0].shape for image in images)
    ):
      return [self.run_model(image) for image in images]
    outputs = self._batch_signature(input_images=tf.constant(np.stack(images)), **self._inputs())
    out = {k: v.numpy() for k, v in outputs.items()}
    per_feature = (
      savedmodel_contract.BOXES,
      savedmodel_contract.FEATURES,
      savedmodel_contract.SCALES,
      savedmodel_contract.SCORES,
    )
    results = []
    for b in range(len(images)):
      result = {
        savedmodel_contract.GLOBAL_DESCRIPTORS: out[savedmodel_contract.GLOBAL_DESCRIPTORS][b]
      }
      if self.local:
        count = int(out[savedmodel_contract.NUM_FEATURES][b])
        result.update({name: out[name][b, :count] for name in per_feature})
      results.append(result)
    return results

  def per_scale_descriptors(self, image: np.ndarray) -> np.ndarray:
    """The signature's L2-normalised global descriptors [S, D] of a preprocessed uint8 image."""
    descriptors = self.run_model(image)[savedmodel_contract.GLOBAL_DESCRIPTORS]
    self._dim = descriptors.shape[-1]
    return descriptors

  def _global(self, per_scale: np.ndarray) -> np.ndarray:
    self._dim = per_scale.shape[-1]
    # NaN / inf from the model are refused afterwards (refuse_non_finite), without numpy warnings.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
      if self.pca is not None and self.pca_per_scale:
        # DELF's order: each scale L2-normalised, projected and L2-normalised, then pooled.
        per_scale = self.pca(arrays.l2_normalize(per_scale, axis=1, dtype=np.float64))
        return pool_scales(per_scale, self.scale_pooling, self.gem_p)
      pooled = pool_scales(per_scale, self.scale_pooling, self.gem_p)
      return self.pca(pooled) if self.pca is not None else pooled

  def extract(self, image, scale_factors=None):
    """Describes one image.

    Args:
      image: global-only: a preprocessed uint8 [H, W, 3] image. DELG: a
        PreprocessedImage (from `load_and_preprocess`), or a uint8 [H, W, 3]
        image, preprocessed (resized) first unless `scale_factors` says it
        already was.
      scale_factors: DELG: [sy, sx] resize factors of an already resized `image`.

    Returns:
      Global-only: the float32 [D'] global descriptor. DELG: a dict with
      'global' float32 [D'] (absent when use_global_features is false),
      'locations' float32 [N, 2] (y, x), 'descriptors' float32 [N, d] (packed
      uint8 [N, ceil(d/8)] when binarised), 'scales' float32 [N], 'scores'
      float32 [N] (attention), strongest first, N <= max_feature_num.

    Raises:
      NonFiniteDescriptorError (a ValueError): a global or local descriptor
        holds NaN or inf (the pipeline records the image as failed).
    """
    image, scale_factors, result = self._prepare(image, scale_factors)
    if result is not None:
      return result
    return self._finish(image, scale_factors, self.run_model(image))

  def extract_batch(self, images: list) -> list:
    """`extract` of each image, the model run once per group of equal-size images.

    Args:
      images: what `extract` takes (without scale factors: DELG images are
        PreprocessedImages or are preprocessed here).

    Returns:
      One entry per image, in order: its `extract` result, or the exception
      `extract` would raise for it (e.g. NonFiniteDescriptorError), so that
      one bad image does not fail the others. If a batched forward itself
      fails, its images are run one by one, each failing alone.
    """
    prepared = [None] * len(images)
    results = [None] * len(images)
    groups = {}
    for i, image in enumerate(images):
      try:
        model_image, scale_factors, done = self._prepare(image, None)
        if done is None:
          model_image = self._check_image(model_image)
      except Exception as e:  # pylint: disable=broad-except
        results[i] = e
        continue
      prepared[i] = model_image, scale_factors, done
      if done is not None:
        results[i] = done
      else:
        groups.setdefault(model_image.shape, []).append(i)
    for members in groups.values():
      try:
        outputs = self.run_model_batch([prepared[i][0] for i in members])
      except Exception:  # pylint: disable=broad-except
        outputs = [None] * len(members)
      for i, out in zip(members, outputs):
        image, scale_factors, _ = prepared[i]
        try:
          results[i] = self._finish(
            image, scale_factors, self.run_model(image) if out is None else out
          )
        except Exception as e:  # pylint: disable=broad-except
          results[i] = e
    return results

  def _prepare(self, image, scale_factors):
    """(uint8 image for the model, DELG scale factors, result without the model or None)."""
    if not self.local:
      if isinstance(image, local_extractor.PreprocessedImage):
        image = image.image
      return image, None, None
    if isinstance(image, local_extractor.PreprocessedImage):
      image, scale_factors = image
    elif scale_factors is None:
      image, scale_factors = self.preprocess(np.asarray(image))
    if min(np.shape(image)[:2]) >= image_loading.MIN_IMAGE_SIZE:
      return image, scale_factors, None
    if self.use_global:
      image_loading.check_min_size(image, "image")
    width = self.local_pca.pca_dim if self.local_pca is not None else 0
    return (
      image,
      scale_factors,
      {  # DELF's tiny-image rule: no local features.
        "locations": np.zeros([0, 2], np.float32),
        "descriptors": np.zeros([0, width], np.float32),
        "scales": np.zeros([0], np.float32),
        "scores": np.zeros([0], np.float32),
      },
    )

  def _finish(self, image, scale_factors, out: dict):
    """`extract`'s result from the model's outputs `out` for `image`."""
    if not self.local:
      descriptor = self._global(out[savedmodel_contract.GLOBAL_DESCRIPTORS])
      refuse_non_finite(descriptor, "global descriptor", image)
      return descriptor
    locations = local_extractor.keypoint_centers(out[savedmodel_contract.BOXES])
    if not self.use_resized_coordinates:
      locations = locations / np.asarray(scale_factors, np.float32)[None, :]
    result = {
      "locations": locations.astype(np.float32),
      "descriptors": self.postprocess_descriptors(out[savedmodel_contract.FEATURES]),
      "scales": self._local_scales(out[savedmodel_contract.SCALES]),
      "scores": out[savedmodel_contract.SCORES].astype(np.float32),
    }
    if self.use_global:
      result["global"] = self._global(out[savedmodel_contract.GLOBAL_DESCRIPTORS])
    for key, what in (("global", "global descriptor"), ("descriptors", "local descriptors")):
      if key in result:
        refuse_non_finite(result[key], what, image)
    return result

  def _local_scales(self, scales: np.ndarray) -> np.ndarray:
    """DELF's .delg_local scales, 1 / pyramid scale, from the signature's output."""
    scales = np.asarray(scales, np.float32)
    return (1.0 / scales).astype(np.float32) if self._invert_local_scales else scales

  def postprocess_descriptors(self, features: np.ndarray) -> np.ndarray:
    """DELG local descriptors as configured (local_extractor.postprocess_descriptors)."""
    pca_dim = self.local_pca.pca_dim if self.local_pca is not None else None
    return local_extractor.postprocess_descriptors(features, self.local_pca, pca_dim, self.binarize)

  def extract_from_file(self, path: str, box=None):
    """Loads, crops, resizes and describes one image file (see `extract`).

    Raises:
      NonFiniteDescriptorError: naming `path`, for NaN or inf descriptors.
    """
    try:
      return self.extract(self.load_and_preprocess(path, box))
    except NonFiniteDescriptorError as e:
      raise NonFiniteDescriptorError(f"{path}: {e}") from e

  # --------------------------------------------------------------------------- files

  def output_paths(self, output_dir: str, image_id: str) -> list[str]:
    """The files written for `image_id`: the global file (if any) first, then DELG's local file."""
    paths = [os.path.join(output_dir, image_id + self.global_suffix)] if self.use_global else []
    if self.local:
      paths.append(os.path.join(output_dir, image_id + self.local_suffix))
    return paths

  def write_outputs(self, output_dir: str, image_id: str, result: dict) -> list[str]:
    """Writes a DELG `extract` result (local_extractor.write_outputs); returns the paths."""
    if not self.local:
      raise ValueError("write_outputs writes DELG results; global descriptors go to the pipeline")
    return local_extractor.write_outputs(
      output_dir, image_id, result, self.global_suffix, self.local_suffix
    )

  def make_writer(self, output_dir: str) -> "local_extractor.LocalGlobalWriter | None":
    """The pipeline.run_extraction writer of DELG results; None for global-only extraction."""
    return local_extractor.LocalGlobalWriter(output_dir, self) if self.local else None
