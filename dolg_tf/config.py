"""The one configuration tree of dolg_tf: model, data, training and export settings.

In the style of the TF Model Garden (official/core/config_definitions.py), on
its `hyperparams.Config`:

    ExperimentConfig
      model:  ModelConfig   the network and its margin head
      data:   DataConfig    training data and augmentation
      train:  TrainConfig   schedule, optimizer, runtime
      export: ExportConfig  the SavedModel's pyramid and size limits (extraction defaults)

The sections model, data and train are defined in dolg_tf/config_sections.py;
ExportConfig is the SavedModel contract's export section
(dolg_tf/io/export_section.py), which extraction reads without this module;
the section base (Section, ConfigError) is dolg_tf/io/config_base.py. The
section types and ConfigError are the tree's and are used from here
(`config_lib.ModelConfig`).

Each field has one default, in its section. Named experiments (dolg_tf/experiments.py)
are presets over these defaults; a YAML/JSON file (`--config_file`) and
`--params_override` ('train.batch_size=8,model.embedding_dim=128', YAML text or
a file) override them, and a command's flags only override fields (they never
declare a second default). `save_config` is the one writer: training writes
`<logdir>/config.json`, export writes the same document (model + export
sections) into the SavedModel (`assets.extra/config.json`), and every later
stage reads it back with `load_config` / `load_model_config`.
"""

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml
from official.modeling import hyperparams
from official.modeling.hyperparams import params_dict

from dolg_tf.config_sections import (
  DELG_MEAN_RGB,
  DELG_STD_RGB,
  DataConfig,
  ModelConfig,
  TrainConfig,
)
from dolg_tf.io import savedmodel_contract
from dolg_tf.io.config_base import ConfigError, Section, jsonable
from dolg_tf.io.export_section import ExportConfig
from dolg_tf.utils import files

CONFIG_FILENAME = "config.json"


# The DELG paper's network as DELF's code builds it: DELF's R50 with
# block3_strides (local features at stride 32), GeM p=3 fixed, 2048-d whitening,
# ArcFace s=45.25 m=0.1, (x - 128) / 128 input. Saved configs store every field,
# so runs made with the earlier default (backbone_layout 'keras',
# block3_strides false) keep loading with their layout.
DELG_MODEL = dict(
  name="delg",
  backbone_layout="delf",
  block3_strides=True,
  gem_p_trainable=False,
  embedding_dim=2048,
  input_mean=DELG_MEAN_RGB,
  input_std=DELG_STD_RGB,
  head_type="arcface",
  head_scale=45.25,
  head_margin=0.1,
)


def delg_config(**overrides) -> ModelConfig:
  """A ModelConfig with the DELG paper's settings (DELG_MODEL); `overrides` win."""
  return ModelConfig(**dict(DELG_MODEL, **overrides))


@dataclasses.dataclass
class ExperimentConfig(Section):
  """Everything one run needs: model, data, training and export settings."""

  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

  def validate(self) -> None:
    for section in (self.model, self.data, self.train, self.export):
      section.coerce()
      section.validate()

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ExperimentConfig":
    """Builds a config from a (partial) dict, rejecting unknown keys (ConfigError)."""
    return override(cls(), values)


def _check_keys(config: hyperparams.Config, values: Mapping[str, Any], prefix: str = "") -> None:
  """Raises ConfigError naming the first key of `values` that is no field of `config`."""
  known = {f.name: f for f in dataclasses.fields(config)}
  for key, value in values.items():
    if key not in known:
      raise ConfigError(f"unknown config field {prefix}{key}")
    child = getattr(config, key)
    if isinstance(child, hyperparams.Config):
      if not isinstance(value, Mapping):
        raise ConfigError(f"config field {prefix}{key} is a section, got {value!r}")
      _check_keys(child, value, f"{prefix}{key}.")
    elif isinstance(value, Mapping):
      raise ConfigError(f"config field {prefix}{key} is a value, got {dict(value)!r}")


def override(config: ExperimentConfig, overrides) -> ExperimentConfig:
  """A copy of `config` with `overrides` applied (hyperparams' strict override), validated.

  Args:
    config: the base config (an ExperimentConfig or one section).
    overrides: a dict, or a string as Model Garden's --params_override takes
      it: 'a.b=1,c.d=x', YAML/JSON text, or the path of a .yaml/.json file.

  Raises:
    ConfigError: unknown field, bad value or unreadable file (named).
  """
  if isinstance(overrides, str):
    overrides = parse_overrides(overrides)
  _check_keys(config, overrides)
  result = copy.deepcopy(config)
  try:
    result.override(dict(overrides), is_strict=True)
  except TypeError as e:  # a value hyperparams cannot hold (e.g. a set)
    raise ConfigError(f"--params_override: {e}") from None
  result.coerce()
  result.validate()
  return result


def parse_overrides(text: str) -> dict:
  """'a.b=1,c=[1, 2]' / YAML or JSON text / a .yaml or .json file -> nested dict.

  The key=value form is read by Model Garden's
  `params_dict.nested_csv_str_to_json_str` (as its --params_override);
  every failure is one ConfigError line.
  """
  text = text.strip()
  if not text:
    return {}
  if text.endswith((".yaml", ".yml", ".json")) and "\n" not in text and "=" not in text:
    try:
      return load_config_dict(text)
    except FileNotFoundError as e:
      raise ConfigError(str(e)) from None
  source = text
  if "=" in text and not text.startswith("{"):
    try:
      text = params_dict.nested_csv_str_to_json_str(text)
    except ValueError:
      raise ConfigError(f"--params_override: expected key=value pairs, got {source!r}") from None
  try:
    values = yaml.safe_load(text)
  except yaml.YAMLError as e:
    raise ConfigError(f"--params_override: not YAML ({' '.join(str(e).split())})") from None
  if not isinstance(values, Mapping):
    raise ConfigError(f"--params_override: expected key=value pairs, got {source!r}")
  return dict(values)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1} (lists and tuples as lists)."""
  flat = {}
  for key, value in values.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = jsonable(value)
  return flat


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
  """{'field.path': (old, new)} for every field whose value differs."""
  flat_old, flat_new = flatten(old), flatten(new)
  return {
    key: (flat_old.get(key), flat_new.get(key))
    for key in sorted(set(flat_old) | set(flat_new))
    if flat_old.get(key) != flat_new.get(key)
  }


# ----------------------------------------------------------------------------- files


# Configs are a few KB; a larger file is not read (bounded memory on a hostile file).
MAX_CONFIG_BYTES = 4 * 2**20


def save_config(config: hyperparams.Config | Mapping[str, Any], path: str) -> str:
  """Writes a config (or its sections as a dict) as JSON, atomically; returns `path`.

  `path` is a file, or a folder that gets CONFIG_FILENAME. This is the one
  writer of dolg_tf configs (training run folders, SavedModels, conversions).
  """
  if not path.endswith(".json"):
    path = os.path.join(path, CONFIG_FILENAME)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  values = config.as_dict() if isinstance(config, hyperparams.Config) else dict(config)
  text = json.dumps(jsonable(values), indent=2, sort_keys=True) + "\n"
  files.atomic_write_bytes(path, text.encode("utf-8"))
  return path


def save_model_config(config: ModelConfig, directory: str) -> str:
  """Writes {'model': config} to `<directory>/config.json` (save_config); returns the path."""
  return save_config({"model": config.as_dict()}, directory)


def _config_file(path: str) -> str:
  if os.path.isdir(path):
    for candidate in (CONFIG_FILENAME, os.path.join("assets.extra", CONFIG_FILENAME)):
      if os.path.exists(os.path.join(path, candidate)):
        return os.path.join(path, candidate)
    return os.path.join(path, CONFIG_FILENAME)
  return path


def load_config_dict(path: str) -> dict:
  """The sections stored at `path` (a config file, a run folder or a SavedModel folder).

  Raises:
    FileNotFoundError: no config there (named).
    ConfigError: not a JSON/YAML mapping, or larger than MAX_CONFIG_BYTES (named).
  """
  path = _config_file(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config not found: {path}")
  size = os.path.getsize(path) if os.path.isfile(path) else 0
  if size > MAX_CONFIG_BYTES:
    raise ConfigError(
      f"{path}: {size} bytes, more than a config may have ({MAX_CONFIG_BYTES // 2**20} MiB)"
    )
  try:
    text = files.read_bytes(path).decode("utf-8")
    # YAML 1.1 reads JSON's 1e-06 as a string: JSON files are parsed as JSON.
    values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
  except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
    raise ConfigError(f"{path}: not a JSON/YAML config ({e})") from e
  if not isinstance(values, Mapping):
    raise ConfigError(f"{path}: a config must be a mapping of sections")
  return dict(values)


def load_config(path: str) -> ExperimentConfig:
  """An ExperimentConfig from `path`; sections it lacks keep their defaults.

  Raises:
    FileNotFoundError: no config there. ConfigError: invalid (file and field named).
  """
  values = load_config_dict(path)
  values.pop(savedmodel_contract.INTERFACE_KEY, None)  # a SavedModel's config.json records it
  if isinstance(values.get("export"), Mapping):  # keys of older exports
    values["export"] = savedmodel_contract.upgrade_export_section(values["export"])
  try:
    return ExperimentConfig.from_dict(values)
  except ConfigError as e:
    raise ConfigError(f"{_config_file(path)}: {e}") from None


def load_model_config(path: str) -> ModelConfig:
  """The `model` section stored at `path` (see load_config_dict).

  Raises:
    FileNotFoundError: no config there. ConfigError: no or an invalid model section.
  """
  values = load_config_dict(path)
  if not isinstance(values.get("model"), Mapping):
    raise ConfigError(f"{_config_file(path)}: no 'model' section")
  try:
    return ModelConfig.from_dict(values["model"])
  except ConfigError as e:
    raise ConfigError(f"{_config_file(path)}: {e}") from None
