"""The export section of the SavedModel contract: ExportConfig, and reading it from an export.

    record = export_section.read_export_config("runs/x/export/1")
    if record is not None:
      record.config.image_scales      # an ExportConfig, validated
      record.recorded_values()        # only the fields the export records
      record.interface_version        # 1 for exports before INTERFACE_KEY

Export writes the section (dolg_tf.config's ExperimentConfig.export) into the
SavedModel's config asset (savedmodel_contract.CONFIG_ASSET); extraction reads
it back here, without model or export code. The names of the contract are
dolg_tf/io/savedmodel_contract.py (TF-free).
"""

import dataclasses
import json
import os
import typing

import tensorflow as tf

from dolg_tf.io import config_base
from dolg_tf.io.savedmodel_contract import (
  CONFIG_ASSET,
  DEFAULT_PYRAMID,
  EXPORT_PRECISIONS,
  EXPORT_SCALE_POOLINGS,
  INTERFACE_KEY,
  LEGACY_CONFIG_ASSET,
  PYRAMID_PRESETS,
  upgrade_export_section,
)

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
