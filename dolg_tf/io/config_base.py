"""The base of dolg_tf's config sections: typed, validated `hyperparams.Config` dataclasses.

A section (dolg_tf.config's ModelConfig, DataConfig, TrainConfig; the
SavedModel contract's ExportConfig) declares its fields with type hints and
defaults and checks them in `validate`; a bad value raises `ConfigError`,
one line naming the field (`<section>.<field>`).
"""

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from official.modeling import hyperparams


class ConfigError(ValueError):
  """A config file or field is invalid; the message names it."""


def check_choice(field: str, value, choices) -> None:
  """Raises ConfigError unless `value` is one of `choices` (`field` is its dotted name)."""
  if value not in choices:
    raise ConfigError(f"{field} must be one of {list(choices)}, got {value!r}")


def check_at_least(owner: str, config, names: Sequence[str], minimum: float) -> None:
  """Raises ConfigError naming `owner.<name>` for the first of `names` below `minimum`."""
  for name in names:
    if getattr(config, name) < minimum:
      raise ConfigError(f"{owner}.{name} must be >= {minimum}, got {getattr(config, name)}")


def field_type(hint) -> type:
  """The type a field holds: `X | None` -> X, `tuple[float, ...]` -> tuple."""
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(t for t in typing.get_args(hint) if t is not type(None))
  return typing.get_origin(hint) or hint


def _coerce(value, hint):
  """`value` as the type `hint` declares (TypeError/ValueError if it cannot be)."""
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(t for t in typing.get_args(hint) if t is not type(None))
  origin = typing.get_origin(hint) or hint
  if origin is tuple:
    element = typing.get_args(hint)[0]
    if isinstance(value, str):
      value = [v for v in value.replace(",", " ").split() if v]
    return tuple(element(v) for v in value)
  if origin is bool:
    if not isinstance(value, bool):
      raise TypeError(f"expected true/false, got {value!r}")
  elif origin is int:
    if isinstance(value, bool) or float(value) != int(value):
      raise TypeError(f"expected an integer, got {value!r}")
    return int(value)
  elif origin is float:
    if isinstance(value, bool):
      raise TypeError(f"expected a number, got {value!r}")
    return float(value)
  elif origin is str:
    if not isinstance(value, str):
      raise TypeError(f"expected a string, got {value!r}")
  return value


class Section(hyperparams.Config):
  """A config section: values coerced to their declared types and validated.

  `hyperparams.Config` stores whatever it is given (an int for a float field,
  a list for a tuple); sections coerce each value to its annotation so that
  configs compare and serialise the same however they were built.
  """

  SECTION = ""

  def __post_init__(self, *args, **kwargs):
    super().__post_init__(*args, **kwargs)
    self.coerce()
    self.validate()

  def coerce(self) -> None:
    hints = typing.get_type_hints(type(self))
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is None or isinstance(value, hyperparams.Config):
        continue
      try:
        value = _coerce(value, hints[field.name])
      except (TypeError, ValueError) as e:
        raise ConfigError(f"{self.SECTION}.{field.name}: {e}") from None
      self.__dict__[field.name] = value

  def validate(self) -> None:
    """Raises ConfigError naming the first invalid field."""

  def to_dict(self) -> dict:
    return jsonable(self.as_dict())

  def replace(self, **changes):
    # hyperparams.Config.replace skips __post_init__; rebuild so values are checked.
    values = self.as_dict()
    values.update(changes)
    return type(self)(**values)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]):
    """Builds a section from a dict, rejecting unknown keys (ConfigError)."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ConfigError(f"unknown {cls.SECTION} field(s): {', '.join(unknown)}")
    return cls(**values)


def jsonable(value):
  """`value` with tuples as lists, mappings as dicts (what JSON holds)."""
  if isinstance(value, Mapping):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [jsonable(v) for v in value]
  return value
