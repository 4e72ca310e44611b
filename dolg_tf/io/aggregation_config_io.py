"""DELF's AggregationConfig (VLAD / ASMK / ASMK* settings) in its text format.

    config = aggregation_config_io.load_config("index_aggregation_config.pbtxt")
    codebook = aggregation_config_io.resolve_codebook_path(config, path)

DELF's own index_aggregation_config.pbtxt / query_aggregation_config.pbtxt
parse unchanged (protos/aggregation_config.proto has DELF's field names,
numbers and defaults). Every error is one line naming the file and the line
or the field, e.g. `q.pbtxt:3:1: Message type ... has no field named "alfa".`
or `q.pbtxt: codebook_size: must be > 0, got 0`.

`codebook_path` resolves like DolgConfig paths (config_io.resolve_path), with
the config file's own folder tried first: absolute paths are kept; a relative
one is looked up next to the config file, then in the current folder, then in
the repository root. A TF checkpoint is named by its prefix (`<prefix>.index`
exists, the prefix itself does not), as DELF writes it.
"""

import math
import os

from google.protobuf import text_format

from dolg_tf.io import config_io
from dolg_tf.protos import aggregation_config_pb2
from dolg_tf.utils import files as file_utils

AggregationConfig = aggregation_config_pb2.AggregationConfig
VLAD = AggregationConfig.VLAD
ASMK = AggregationConfig.ASMK
ASMK_STAR = AggregationConfig.ASMK_STAR
TYPES = (VLAD, ASMK, ASMK_STAR)


def type_name(aggregation_type: int) -> str:
  """'VLAD', 'ASMK', 'ASMK_STAR' (or the number, if it is not a known type)."""
  try:
    return AggregationConfig.AggregationType.Name(aggregation_type)
  except ValueError:
    return str(aggregation_type)


def parse_config(text: str, source: str = "<string>", need_codebook: bool = True):
  """Parses and validates an AggregationConfig in text format.

  Args:
    text: the text-format config.
    source: name used in error messages (normally the file path).
    need_codebook: whether codebook_path must be set (extraction needs it,
      comparison does not).

  Returns:
    The validated AggregationConfig.

  Raises:
    ValueError: `source:line:column: reason` on a parse error,
      `source: field: reason` when validation fails.
  """
  config = AggregationConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    location = f"{source}:{e.GetLine()}:{e.GetColumn()}" if e.GetLine() else source
    message = str(e).split(" : ", 1)[-1] if e.GetLine() else str(e)
    raise ValueError(f"{location}: {message}".replace("\n", " ")) from e
  validate_config(config, source, need_codebook=need_codebook)
  return config


def load_config(path: str, need_codebook: bool = True):
  """Reads and validates the AggregationConfig text file `path` (see parse_config).

  Raises:
    FileNotFoundError: naming `path`, if it does not exist.
    ValueError: one line naming `path` and the line or field.
  """
  data = file_utils.read_bytes(path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a text-format AggregationConfig (not UTF-8: {e})") from e
  return parse_config(text, path, need_codebook=need_codebook)


def validate_config(config, source: str = "<config>", need_codebook: bool = True) -> None:
  """Checks the fields of an AggregationConfig.

  Rules: codebook_size > 0; feature_dimensionality > 0; aggregation_type is
  VLAD, ASMK or ASMK_STAR (not INVALID); 1 <= num_assignments <=
  codebook_size (DELF takes the num_assignments nearest words); alpha and tau
  finite, tau within [-1, 1] (it thresholds a cosine similarity); codebook_path
  set when `need_codebook`. DELF applies use_l2_normalization at extraction
  to VLAD only (ASMK / ASMK* use it at comparison) and feature_batch_size <= 0
  means one batch.

  Raises:
    ValueError: `source: field: reason`.
  """

  def bad(field, reason):
    raise ValueError(f"{source}: {field}: {reason}")

  if config.codebook_size <= 0:
    bad("codebook_size", f"must be > 0, got {config.codebook_size}")
  if config.feature_dimensionality <= 0:
    bad("feature_dimensionality", f"must be > 0, got {config.feature_dimensionality}")
  if config.aggregation_type not in TYPES:
    bad(
      "aggregation_type",
      f"must be VLAD, ASMK or ASMK_STAR, got {type_name(config.aggregation_type)}",
    )
  if not 1 <= config.num_assignments <= config.codebook_size:
    bad(
      "num_assignments",
      f"must be between 1 and codebook_size ({config.codebook_size}), got {config.num_assignments}",
    )
  if not math.isfinite(config.alpha):
    bad("alpha", f"must be a finite number, got {config.alpha}")
  if not (math.isfinite(config.tau) and -1.0 <= config.tau <= 1.0):
    bad("tau", f"must be a finite number in [-1, 1], got {config.tau}")
  if need_codebook and not config.codebook_path:
    bad("codebook_path", "not set (the codebook dolg-train-codebook wrote)")


def _codebook_exists(path: str) -> bool:
  """Whether `path` is a file, a folder, or a TF checkpoint prefix (`<path>.index`)."""
  return os.path.exists(path) or os.path.exists(path + ".index")


def resolve_codebook_path(config, config_path: str | None = None, must_exist: bool = True) -> str:
  """The absolute path of `config.codebook_path` (module doc: config folder first).

  Args:
    config: the AggregationConfig.
    config_path: the file it was read from (its folder is searched first).
    must_exist: if False, a path found nowhere resolves next to the config.

  Raises:
    ValueError: `config_path: codebook_path: not set`.
    FileNotFoundError: naming the config, the field and the places looked at.
  """
  return config_io.resolve_path(
    config.codebook_path,
    "codebook_path",
    config_path,
    must_exist,
    config_folder_first=True,
    exists=_codebook_exists,
  )


def config_to_text(config) -> str:
  """The text format of `config` (what load_config reads back)."""
  return text_format.MessageToString(config)
