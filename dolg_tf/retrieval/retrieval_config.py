"""The settings of one retrieval evaluation in one object (evaluation.evaluate takes it).

    RetrievalConfig
      suffix, local_suffix          descriptor and local feature file suffixes
      num_ranked                    ranking depth kept (0 = the whole database)
      query_expansion               QueryExpansionConfig (query_expansion.py): alpha-QE / DBA
      superglobal                   SuperGlobalConfig (superglobal.py): SuperGlobal re-ranking
      use_geometric_verification    re-rank with DELG local features
      geometric_verification        GeometricVerificationConfig (geometric_verification.py)
      asmk                          AsmkConfig (asmk_rerank.py): ASMK / ASMK* / VLAD
                                    ranking alone or re-ranking the global top N

Each part is declared next to the code it configures, with its defaults, once.
Commands generate their flags from the fields with cli.define_config_flags
(`define_flags`): each flag is named as its field, the SuperGlobal ones
prefixed `superglobal_`, the verification ones `gv_` and the aggregated
local feature ones `asmk_` (--superglobal_m, --gv_top_k, --asmk_mode), and
only overrides the default (`from_flags`).

Frozen dataclasses rather than hyperparams.Config sections (io/config_base.py):
official.modeling.hyperparams imports TensorFlow, which retrieval never needs;
on the project's 2-core machine it added 14 s to dolg-retrieve's start-up and
465 MB to its peak memory.
"""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from absl import flags

from dolg_tf.io import descriptor_files
from dolg_tf.retrieval import asmk_rerank, rerank
from dolg_tf.retrieval import geometric_verification as verification_lib
from dolg_tf.retrieval import query_expansion as expansion_lib
from dolg_tf.retrieval import superglobal as superglobal_lib
from dolg_tf.utils import cli

# The sections of RetrievalConfig and the prefix of their flags' names.
FLAG_PREFIXES = {
  "query_expansion": "",
  "superglobal": "superglobal_",
  "geometric_verification": "gv_",
  "asmk": "asmk_",
}


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
  """Everything one evaluation needs besides its inputs (module doc).

  Attributes:
    suffix: per-image global descriptor file suffix.
    local_suffix: local feature file suffix (geometric verification).
    num_ranked: keep only the top-k of each ranking (0 = the whole database).
    query_expansion: alpha-QE and alpha-DBA (off by default).
    superglobal: SuperGlobal re-ranking of the top M (off by default, M = 0).
      It does its own query expansion and database-side augmentation, so it
      is refused together with alpha-QE / DBA.
    use_geometric_verification: re-rank the top of the ranking (after
      SuperGlobal when it is on) with DELG local features + RANSAC.
    geometric_verification: its settings.
    asmk: aggregated local feature retrieval (off by default): ranking with
      ASMK / ASMK* / VLAD alone, or re-ranking the global top N, before
      geometric verification. Refused together with SuperGlobal, and its
      alone mode with alpha-QE / DBA (they act on global descriptors).
  """

  suffix: str = descriptor_files.DEFAULT_SUFFIX
  local_suffix: str = rerank.LOCAL_SUFFIX
  num_ranked: int = 0
  query_expansion: expansion_lib.QueryExpansionConfig = dataclasses.field(
    default_factory=expansion_lib.QueryExpansionConfig
  )
  superglobal: superglobal_lib.SuperGlobalConfig = dataclasses.field(
    default_factory=superglobal_lib.SuperGlobalConfig
  )
  use_geometric_verification: bool = False
  geometric_verification: verification_lib.GeometricVerificationConfig = dataclasses.field(
    default_factory=verification_lib.GeometricVerificationConfig
  )
  asmk: asmk_rerank.AsmkConfig = dataclasses.field(default_factory=asmk_rerank.AsmkConfig)

  def __post_init__(self):
    m, expansion = self.superglobal.m, self.query_expansion
    mode = self.asmk.mode
    if mode != "off" and m:
      raise ValueError(
        f"asmk_mode={mode} cannot be combined with superglobal_m={m} (set one of them off)"
      )
    if mode == "alone" and (expansion.qe_n or expansion.dba_n):
      raise ValueError(
        f"asmk_mode=alone cannot be combined with qe_n={expansion.qe_n} / "
        f"dba_n={expansion.dba_n}: they expand global descriptors, which ASMK alone does not read"
      )
    if m and (expansion.qe_n or expansion.dba_n):
      raise ValueError(
        f"superglobal_m={m} cannot be combined with qe_n={expansion.qe_n} / "
        f"dba_n={expansion.dba_n}: SuperGlobal does its own query expansion and "
        "database-side augmentation (set qe_n=0 and dba_n=0)"
      )

  def overridden(self, values: Mapping[str, Any]) -> "RetrievalConfig":
    """A copy with `values` applied, e.g. {"num_ranked": 100, "superglobal": {"m": 400}}.

    Raises:
      ValueError: an unknown field (named) or a value out of range.
    """
    known = {f.name for f in dataclasses.fields(self)}
    changes = {}
    for name, value in values.items():
      if name not in known:
        raise ValueError(f"unknown retrieval config field {name}")
      if name in FLAG_PREFIXES:
        changes[name] = _section_overridden(getattr(self, name), name, value)
      else:
        changes[name] = value
    return dataclasses.replace(self, **changes)


def _section_overridden(section, name: str, values: Mapping[str, Any]):
  unknown = sorted(set(values) - {f.name for f in dataclasses.fields(section)})
  if unknown:
    raise ValueError(f"unknown retrieval config field {name}.{unknown[0]}")
  return dataclasses.replace(section, **values)


def define_flags(
  flag_values: flags.FlagValues = flags.FLAGS,
  sections: Iterable[str] = tuple(FLAG_PREFIXES),
  top_level: bool = True,
) -> dict[str, str]:
  """One override flag per RetrievalConfig field (module doc); a second call is a no-op.

  Args:
    flag_values: where to define them.
    sections: the sections whose fields get flags (default: all).
    top_level: whether the top-level fields (suffix, local_suffix, num_ranked,
      use_geometric_verification) get flags too.

  Returns:
    {flag name: field path} for `from_flags`.
  """
  config = RetrievalConfig()
  mapping = {}
  if top_level:
    mapping.update(
      cli.define_config_flags(config, skip=tuple(FLAG_PREFIXES), flag_values=flag_values)
    )
  for section in sections:
    mapping.update(
      cli.define_config_flags(
        config, [section], flag_values=flag_values, flag_prefix=FLAG_PREFIXES[section]
      )
    )
  return mapping


def from_flags(
  mapping: Mapping[str, str], flag_values: flags.FlagValues = flags.FLAGS
) -> RetrievalConfig:
  """The RetrievalConfig the flags of `mapping` (from `define_flags`) give.

  Raises:
    cli.UserError: a value out of range or a refused combination, naming the flag.
  """
  overrides = cli.given_overrides(mapping, flag_values)
  config = RetrievalConfig()
  for section, prefix in FLAG_PREFIXES.items():
    try:
      config = config.overridden({section: overrides.pop(section, {})})
    except ValueError as e:
      message = str(e)
      raise cli.UserError(f"--{message if message.startswith(prefix) else prefix + message}") from e
  try:
    return config.overridden(overrides)
  except ValueError as e:
    raise cli.UserError(f"--{e}") from e
