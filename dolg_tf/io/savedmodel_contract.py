"""The SavedModel contract: what export writes and extraction and serving read.

Signature, input and output names; the config asset (the experiment config
the model was exported with: its `model` and `export` sections) and the
interface version recorded there; ExportConfig, the `export` section, and
`read_export_config`, which reads an export's section through it, tolerating
what older exports wrote:

    record = savedmodel_contract.read_export_config("runs/x/export/1")
    if record is not None:
      record.config.image_scales      # an ExportConfig, validated
      record.recorded_values()        # only the fields the export records
      record.interface_version        # 1 for exports before INTERFACE_KEY

The bottom layer of the package (dolg_tf/io): export, extraction, serving
and dolg_tf.config import it; it imports no model, export or extraction code.
"""

import dataclasses
import json
import os
import typing

import tensorflow as tf

from dolg_tf.io import config_base

# Signatures.
SERVING_DEFAULT = "serving_default"  # DOLG: global descriptors; DELG: DELF's local + global.
SERVE_GLOBAL = "serve_global"  # DELG exports: the global-only interface of DOLG's default.
SERVE_ENCODED = "serve_encoded"  # A batch of encoded images (REST clients, base64).
# Batches of decoded images of one size (batched extraction, accelerators): the
# global-only interface, and DELG's local+global one, with INPUT_IMAGES.
SERVE_GLOBAL_BATCH = "serve_global_batch"
SERVE_LOCAL_BATCH = "serve_local_batch"
# The signatures with the global-only interface, in order of preference.
GLOBAL_SIGNATURES = (SERVE_GLOBAL, SERVING_DEFAULT)

# Inputs.
INPUT_IMAGE = "input_image"  # uint8 [H, W, 3]
INPUT_SCALES = "input_scales"  # float32 [S]
INPUT_GLOBAL_SCALES_IND = "input_global_scales_ind"  # int32 [G]
INPUT_MAX_FEATURE_NUM = "input_max_feature_num"  # int32 []
INPUT_ABS_THRES = "input_abs_thres"  # float32 []
INPUT_ENCODED_IMAGES = "images"  # string [B]
INPUT_IMAGES = "input_images"  # uint8 [B, H, W, 3], the batched signatures
GLOBAL_INPUTS = frozenset({INPUT_IMAGE, INPUT_SCALES, INPUT_GLOBAL_SCALES_IND})
LOCAL_GLOBAL_INPUTS = GLOBAL_INPUTS | {INPUT_MAX_FEATURE_NUM, INPUT_ABS_THRES}
BATCH_GLOBAL_INPUTS = (GLOBAL_INPUTS - {INPUT_IMAGE}) | {INPUT_IMAGES}
BATCH_LOCAL_GLOBAL_INPUTS = (LOCAL_GLOBAL_INPUTS - {INPUT_IMAGE}) | {INPUT_IMAGES}

# Outputs.
GLOBAL_DESCRIPTORS = "global_descriptors"  # float32 [S or G, D], per scale
GLOBAL_DESCRIPTOR = "global_descriptor"  # float32 [D] (serve_encoded: [B, D])
BOXES = "boxes"  # float32 [N, 4]
FEATURES = "features"  # float32 [N, d]
SCALES = "scales"  # float32 [N]: 1 / pyramid scale (DELF), see INTERFACE_VERSION
SCORES = "scores"  # float32 [N]
# The batched signatures give every output above with a leading batch axis
# ([B, S, D], [B, D]; DELG's per-feature outputs padded to [B, K, ...]) and:
NUM_FEATURES = "num_features"  # int32 [B]: the valid rows of each image's features

# Scalar float32 variables of non-frozen exports, attributes of the loaded
# SavedModel that extraction may assign (SuperGlobal's test-time options):
GEM_PLUS_P = "superglobal_gem_p"  # GeM+ exponent of the global GeM; 0 = the trained p
REGIONAL_GEM_WEIGHT = "regional_gem_weight"  # Regional-GeM blend weight; 0 = off

# The experiment config (dolg_tf.config) the SavedModel was exported with, as
# JSON, inside the SavedModel folder: its `model` and `export` sections
# (pyramid, size limits) give extraction its defaults.
CONFIG_ASSET = "assets.extra/config.json"

# The version of this interface, recorded in CONFIG_ASSET under INTERFACE_KEY.
# 2: DELG's SCALES output holds 1 / s, DELF's convention. Exports of this
# project without the key (version 1) hold s itself; extraction inverts those.
# DELF's own exports have no CONFIG_ASSET and already hold 1 / s.
INTERFACE_KEY = "interface_version"
INTERFACE_VERSION = 2

# Exports of this project written before CONFIG_ASSET: only the export
# settings, as a flat JSON object (its interface version is 1).
LEGACY_CONFIG_ASSET = "assets.extra/export_config.json"
# Keys older exports wrote in the export section under another name -> the field.
RENAMED_EXPORT_KEYS = {"jit_compile": "serve_jit_compile"}

# Image pyramids (ExportConfig.image_scales), by name; each pyramid has one name.
PYRAMID_PRESETS = {
  # 1/sqrt(2), 1, sqrt(2): the DELF-style 3 scales of official DOLG's training
  # config, with the largest side capped (ExportConfig's default).
  "delf_3": (0.7071, 1.0, 1.4142),
  # The pyramid of the official DOLG evaluation script (evaler/infer.py), used
  # with no size cap: the official-checkpoint converter's default.
  "official_5": (0.3535, 0.5, 0.7071, 1.0, 1.4142),
}
DEFAULT_PYRAMID = "delf_3"

# Export precisions: the SavedModel's compute type (inputs and outputs stay float32 / uint8).
EXPORT_PRECISIONS = ("float32", "bfloat16", "auto")
# How the serving signatures pool the pyramid's descriptors (ExportConfig.scale_pooling).
EXPORT_SCALE_POOLINGS = ("average", "max")
# The export fields with a fixed set of values.
_EXPORT_CHOICES = {"precision": EXPORT_PRECISIONS, "scale_pooling": EXPORT_SCALE_POOLINGS}


@dataclasses.dataclass
class ExportConfig(config_base.Section):
  """What the SavedModel records for extraction (and serve_encoded uses).

  Attributes:
    image_scales: the pyramid (default PYRAMID_PRESETS["delf_3"], official
      DOLG's 1/sqrt(2), 1, sqrt(2)).
    max_image_size: images whose largest side exceeds it are downscaled
      first; -1 = no limit.
    min_image_size: images whose largest side is below it are upscaled first
      (DELF semantics); -1 = no limit.
    precision: "float32", or "bfloat16": the network computes in bfloat16
      (Keras mixed_bfloat16: bf16 convolutions and matmuls, float32 weights
      kept as bf16 copies, float32 normalisation of the outputs), for CPUs with
      AVX512_BF16 / AMX and for TPUs. Inputs and outputs keep their dtypes.
      "auto": bfloat16 when the exporting CPU computes it natively, else
      float32 (the SavedModel records the precision it got).
    fold_batch_norms: the served network has the backbone's batch norms
      folded into its convolutions (kernel x gamma / sqrt(var + eps), the
      shift as a bias): the same function up to float rounding (~2e-7). TF's
      CPU remapper fuses a float32 convolution with its batch norm anyway,
      but a bfloat16 one only with a bias, so bfloat16 serving gets ~1.1x
      faster (DOLG-R101, 512 px, AVX512_BF16) and float32 stays as fast.
      false serves the Keras graph exactly as trained.
    serve_jit_compile: the signatures run the network XLA-compiled (GPU/TPU;
      compiled once per input shape, so for fixed-size batches).
    freeze_weights: serve from a graph with the weights as constants: ~15%
      faster on CPU (oneDNN caches its weight layouts), but loading it peaks
      at several GB more memory (TensorFlow copies the constants per graph).
      Off by default: the memory bound matters more for batch extraction.
    superglobal_gem_p: SuperGlobal's GeM+: the exponent of the global GeM at
      inference; 0 = the trained p (SuperGlobal: 4.6). A variable of the
      SavedModel: extraction configs can change it (global_config.gem_plus_p).
    regional_gem_weight: SuperGlobal's Regional-GeM: f4 is blended as
      (1 - w) f4 + w LP-pool(f4) before the GeM; 0 = off (SuperGlobal: 0.5).
      Also a SavedModel variable (global_config.regional_gem_weight).
    regional_gem_p: Regional-GeM's LP exponent (SuperGlobal: 2.5).
    regional_gem_size: Regional-GeM's window side, odd (SuperGlobal: 5).
    scale_pooling: how the serving signatures pool the pyramid's descriptors
      into `global_descriptor` (and extraction's default): "average" (official
      DOLG) or "max" (SuperGlobal's Scale-GeM at p = infinity, its default).
  """

  SECTION = "export"

  image_scales: tuple[float, ...] = PYRAMID_PRESETS[DEFAULT_PYRAMID]
  max_image_size: int = 1024
  min_image_size: int = -1
  precision: str = "float32"
  fold_batch_norms: bool = True
  freeze_weights: bool = False
  serve_jit_compile: bool = False
  superglobal_gem_p: float = 0.0
  regional_gem_weight: float = 0.0
  regional_gem_p: float = 2.5
  regional_gem_size: int = 5
  scale_pooling: str = "average"

  def validate(self) -> None:
    config_base.check_choice("export.precision", self.precision, EXPORT_PRECISIONS)
    config_base.check_choice("export.scale_pooling", self.scale_pooling, EXPORT_SCALE_POOLINGS)
    if self.superglobal_gem_p < 0:
      raise config_base.ConfigError(
        f"export.superglobal_gem_p must be >= 0 (0 = trained p), got {self.superglobal_gem_p}"
      )
    if not 0 <= self.regional_gem_weight <= 1:
      raise config_base.ConfigError(
        f"export.regional_gem_weight must be in [0, 1], got {self.regional_gem_weight}"
      )
    if self.regional_gem_p <= 0:
      raise config_base.ConfigError(
        f"export.regional_gem_p must be positive, got {self.regional_gem_p}"
      )
    if self.regional_gem_size < 1 or self.regional_gem_size % 2 == 0:
      raise config_base.ConfigError(
        f"export.regional_gem_size must be odd and positive, got {self.regional_gem_size}"
      )
    if not self.image_scales or min(self.image_scales) <= 0:
      raise config_base.ConfigError(
        f"export.image_scales must be positive, got {self.image_scales}"
      )
    for name in ("max_image_size", "min_image_size"):
      value = getattr(self, name)
      if value != -1 and value <= 0:
        raise config_base.ConfigError(
          f"export.{name} must be positive or -1 (no limit), got {value}"
        )


def upgrade_export_section(values: typing.Mapping) -> dict:
  """An export section as an older export wrote it, with its keys renamed to the fields'.

  RENAMED_EXPORT_KEYS are renamed (a key under the new name wins); other keys
  are kept as they are.
  """
  upgraded = {k: v for k, v in values.items() if k not in RENAMED_EXPORT_KEYS}
  for old, new in RENAMED_EXPORT_KEYS.items():
    if old in values and new not in upgraded:
      upgraded[new] = values[old]
  return upgraded


@dataclasses.dataclass(frozen=True)
class ExportRecord:
  """What an export's config asset says about it.

  Attributes:
    path: the file read (CONFIG_ASSET, or LEGACY_CONFIG_ASSET of older exports).
    config: its export section; the fields it does not record at their defaults.
    recorded: the ExportConfig fields the file records.
    interface_version: INTERFACE_VERSION of the export (1 before the key existed).
  """

  path: str
  config: ExportConfig
  recorded: frozenset[str]
  interface_version: int

  def recorded_values(self) -> dict:
    """{field: value} for the fields the export records (values as ExportConfig holds them)."""
    return {name: getattr(self.config, name) for name in sorted(self.recorded)}


def _read_json(path: str):
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      return json.loads(f.read())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a JSON file ({e})") from e


def _check_json_type(where: str, name: str, value, hint) -> None:
  """Raises ValueError (naming `where`) unless JSON `value` has the type of the field."""
  kind = config_base.field_type(hint)
  is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if name in _EXPORT_CHOICES:
    if value not in _EXPORT_CHOICES[name]:
      choices = sorted(_EXPORT_CHOICES[name])
      raise ValueError(f"{where}: expected one of {choices}, got {value!r}")
  elif kind is tuple:
    if not isinstance(value, list) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
      raise ValueError(f"{where}: expected a list of numbers, got {value!r}")
  elif kind is int:
    if not isinstance(value, int) or isinstance(value, bool):
      raise ValueError(f"{where}: expected an integer, got {value!r}")
  elif kind is float:
    if not is_number:
      raise ValueError(f"{where}: expected a number, got {value!r}")
  elif kind is bool:
    if not isinstance(value, bool):
      raise ValueError(f"{where}: expected true/false, got {value!r}")
  elif not isinstance(value, kind):
    raise ValueError(f"{where}: expected a {kind.__name__}, got {value!r}")


def export_config_from_section(
  section: typing.Mapping, path: str, prefix: str = "export."
) -> tuple[ExportConfig, frozenset[str]]:
  """The ExportConfig an export's section describes, and the fields it records.

  Keys of older exports are renamed (RENAMED_EXPORT_KEYS) and keys that are no
  ExportConfig field are ignored, so that exports of other versions load.

  Raises:
    ValueError: a field has the wrong JSON type or an invalid value (one
      line naming `path` and the field).
  """
  hints = typing.get_type_hints(ExportConfig)
  values = {}
  for name, value in upgrade_export_section(section).items():
    if name not in hints or value is None:
      continue
    _check_json_type(f"{path}: {prefix}{name}", name, value, hints[name])
    values[name] = value
  try:
    return ExportConfig(**values), frozenset(values)
  except config_base.ConfigError as e:
    raise ValueError(f"{path}: {e}") from None


def read_export_config(model_path: str | None) -> ExportRecord | None:
  """The export section (and interface version) a SavedModel folder records.

  Reads the "export" section of `<model_path>/assets.extra/config.json`
  (CONFIG_ASSET), or else the flat `<model_path>/assets.extra/export_config.json`
  (LEGACY_CONFIG_ASSET of older exports), through ExportConfig
  (`export_config_from_section`).

  Args:
    model_path: the SavedModel folder (a local path or a tf.io.gfile URL), or None.

  Returns:
    An ExportRecord, or None when `model_path` is None or the folder has no
    config asset (e.g. a DELF export, which follows DELF's conventions).

  Raises:
    ValueError: the file is not JSON, not an object, or a field has the wrong
      type or value (one line naming the file and field).
  """
  if not model_path:
    return None
  path = os.path.join(model_path, CONFIG_ASSET)
  if tf.io.gfile.exists(path):
    payload = _read_json(path)
    section = payload.get("export", {}) if isinstance(payload, dict) else None
    if not isinstance(section, dict):
      raise ValueError(f"{path}: expected a JSON object 'export'")
    version = payload.get(INTERFACE_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool):
      raise ValueError(f"{path}: {INTERFACE_KEY}: expected an integer, got {version!r}")
    config, recorded = export_config_from_section(section, path)
    return ExportRecord(path, config, recorded, version)
  path = os.path.join(model_path, LEGACY_CONFIG_ASSET)
  if tf.io.gfile.exists(path):
    payload = _read_json(path)
    if not isinstance(payload, dict):
      raise ValueError(f"{path}: expected a JSON object")
    config, recorded = export_config_from_section(payload, path, prefix="")
    return ExportRecord(path, config, recorded, 1)
  return None
