"""VLAD, ASMK, ASMK* and their regional variants, as DELF's aggregation extractor computes them.

    aggregator = aggregation.Aggregator(config, codebook)   # or aggregation.from_config(...)
    aggregated, visual_words = aggregator.aggregate(descriptors)          # [N, D] float
    aggregated, visual_words = aggregator.aggregate(descriptors, [3, 0, 5])  # regional
    aggregation.write_aggregated(path, aggregated, visual_words)
    aggregated, visual_words = aggregation.read_aggregated(path)

`config` is DELF's AggregationConfig (io/aggregation_config_io.py), `codebook`
the [K, D] centroids (codebook.py). NumPy only (no TensorFlow). Outputs as
DELF's ExtractAggregatedRepresentation.Extract returns them:

* VLAD: float32 [K*D], the residuals to the `num_assignments` nearest words
  summed per word (word-major), L2-normalised over the whole vector if
  use_l2_normalization; visual_words is DELF's dummy int32 -1 (0-d).
* ASMK: float32 [M*D], the per-word residual sums of the M words whose sum has
  an L2 norm > 1e-6, each L2-normalised, in increasing word order;
  visual_words int64 [M] (those words).
* ASMK*: ASMK's vectors binarised (> 0) and packed per word with np.packbits
  (big-endian bits, D padded to a multiple of 8): uint8 [M*ceil(D/8)].
* Regional (use_regional_aggregation; R-VLAD / R-ASMK / R-ASMK*):
  `num_features_per_region` splits the rows into R consecutive regions; each
  region's VLAD is L2-normalised, the R vectors summed, then R-VLAD is
  L2-normalised (use_l2_normalization) or divided by R; R-ASMK(*) divides by R
  then normalises per word as ASMK does. A region without features adds zero.

Edge cases as DELF: no descriptors -> all-zero VLAD / empty ASMK; an empty
region list -> all-zero / empty; sum(num_features_per_region) != N ->
ValueError. One deliberate difference: regional aggregation without
`num_features_per_region` raises (DELF silently returns zeros).

Assignment: squared L2 distances, nearest first, exact ties to the lower word
id (as tf.argsort does); distances are computed as |x|^2 - 2 x.c + |c|^2 in
float32, so two words whose distances differ by float32 rounding only may be
ordered differently from DELF's elementwise sums. Residuals are accumulated
in DELF's order (feature by feature), in float32.

Files (DELF's aggregation_extraction): VLAD is a DatumProto of the float32
vector; ASMK / ASMK* a DatumPairProto (aggregated, visual words as uint32);
ASMK*'s packed bytes are stored in the uint32 list (DELF's ArrayToDatum of
uint8). Extensions: EXTENSIONS / output_extension. DELF's own
datum_io.ReadFromFile / ReadPairFromFile read them.
"""

import os

import numpy as np

from dolg_tf.io import aggregation_config_io, datum_io
from dolg_tf.retrieval import codebook as codebook_lib

VLAD = aggregation_config_io.VLAD
ASMK = aggregation_config_io.ASMK
ASMK_STAR = aggregation_config_io.ASMK_STAR
# DELF's norm tolerance: l2_normalize's epsilon (on the squared norm) and the
# per-word norm threshold sqrt(1e-12) of ASMK's visual words.
NORM_SQUARED_TOLERANCE = 1e-12
# (aggregation_type, use_regional_aggregation) -> DELF's file extension.
EXTENSIONS = {
  (VLAD, False): ".vlad",
  (ASMK, False): ".asmk",
  (ASMK_STAR, False): ".asmk_star",
  (VLAD, True): ".rvlad",
  (ASMK, True): ".rasmk",
  (ASMK_STAR, True): ".rasmk_star",
}
_TYPE_OF_EXTENSION = {ext: kind for (kind, _), ext in EXTENSIONS.items()}


def output_extension(config) -> str:
  """DELF's extension of `config`'s files: '.vlad', '.asmk', '.asmk_star', '.r...'."""
  return EXTENSIONS[(config.aggregation_type, bool(config.use_regional_aggregation))]


def _l2_normalize(vector: np.ndarray, axis=None) -> np.ndarray:
  """tf.math.l2_normalize(vector, axis, epsilon=1e-12) in float32."""
  squared = np.sum(vector * vector, axis=axis, keepdims=axis is not None, dtype=np.float32)
  scale = (1.0 / np.sqrt(np.maximum(squared, np.float32(NORM_SQUARED_TOLERANCE)))).astype(
    np.float32
  )
  return vector * scale


class Aggregator:
  """DELF's ExtractAggregatedRepresentation over a codebook held in memory (module doc)."""

  def __init__(self, config, codebook: np.ndarray):
    """Checks `config` and the codebook's shape.

    Args:
      config: an AggregationConfig (codebook_path is not used here).
      codebook: float [codebook_size, feature_dimensionality] centroids.

    Raises:
      ValueError: a bad config field, or a codebook of another shape.
    """
    aggregation_config_io.validate_config(config, "<AggregationConfig>", need_codebook=False)
    codebook = np.ascontiguousarray(codebook, dtype=np.float32)
    expected = (config.codebook_size, config.feature_dimensionality)
    if codebook.shape != expected:
      raise ValueError(
        f"codebook is {list(codebook.shape)}, the config wants [{expected[0]}, {expected[1]}]"
      )
    self.config = config
    self.codebook = codebook
    self.codebook_size, self.dim = expected
    self.aggregation_type = config.aggregation_type
    self.regional = bool(config.use_regional_aggregation)
    self.num_assignments = int(config.num_assignments)
    self.batch_size = int(config.feature_batch_size)
    self._codebook_norms = np.sum(codebook * codebook, axis=1)

  # ---------------------------------------------------------------- assignment

  def assign(self, descriptors: np.ndarray) -> np.ndarray:
    """The num_assignments nearest visual words of each row, nearest first: int64 [N, A]."""
    n = len(descriptors)
    batch = n if self.batch_size <= 0 else self.batch_size
    words = np.empty([n, self.num_assignments], np.int64)
    for start in range(0, n, max(batch, 1)):
      block = descriptors[start : start + batch]
      distances = np.sum(block * block, axis=1, keepdims=True) - 2.0 * (block @ self.codebook.T)
      distances += self._codebook_norms
      if self.num_assignments == 1:
        words[start : start + batch, 0] = np.argmin(distances, axis=1)
      else:
        order = np.argsort(distances, axis=1, kind="stable")
        words[start : start + batch] = order[:, : self.num_assignments]
    return words

  def _residual_sums(self, descriptors: np.ndarray):
    """(sorted words int64 [U], float32 [U, D] residual sums): an unnormalised sparse VLAD."""
    if not len(descriptors):
      return np.zeros([0], np.int64), np.zeros([0, self.dim], np.float32)
    assignments = self.assign(descriptors)
    words, inverse = np.unique(assignments, return_inverse=True)
    inverse = inverse.reshape(assignments.shape)
    sums = np.zeros([len(words), self.dim], np.float32)
    batch = len(descriptors) if self.batch_size <= 0 else self.batch_size
    for start in range(0, len(descriptors), batch):
      rows = descriptors[start : start + batch]
      chosen = assignments[start : start + batch]
      residuals = rows[:, None, :] - self.codebook[chosen]  # [B, A, D]
      np.add.at(sums, inverse[start : start + batch].ravel(), residuals.reshape(-1, self.dim))
    return words, sums

  # ---------------------------------------------------------------- aggregation

  def _check_inputs(self, descriptors, num_features_per_region):
    descriptors = np.asarray(descriptors, dtype=np.float32)
    if descriptors.size == 0:
      descriptors = np.zeros([0, self.dim], np.float32)
    elif descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
      raise ValueError(
        f"descriptors must be [N, {self.dim}] (feature_dimensionality), "
        f"got {list(descriptors.shape)}"
      )
    regions = None
    if num_features_per_region is not None:
      regions = np.asarray(num_features_per_region, dtype=np.int64).reshape(-1)
      if (regions < 0).any():
        raise ValueError(f"num_features_per_region has negative counts: {regions.tolist()}")
      if len(regions) and int(regions.sum()) != len(descriptors):
        raise ValueError(
          "Incorrect arguments: sum(num_features_per_region) and features.shape[0] are "
          f"different: {int(regions.sum())} vs {len(descriptors)}"
        )
    elif self.regional:
      raise ValueError(
        "use_regional_aggregation needs num_features_per_region (the features of each region)"
      )
    return descriptors, regions

  def _regional_sums(self, descriptors, regions):
    """(words, rows): the sum over regions of each region's L2-normalised VLAD, sparse."""
    parts, start = [], 0
    for count in regions.tolist():
      words, sums = self._residual_sums(descriptors[start : start + count])
      start += count
      parts.append((words, _l2_normalize(sums)))  # a region's VLAD, over its K*D vector
    if not parts:
      return np.zeros([0], np.int64), np.zeros([0, self.dim], np.float32)
    all_words = np.concatenate([w for w, _ in parts])
    words, inverse = np.unique(all_words, return_inverse=True)
    total = np.zeros([len(words), self.dim], np.float32)
    np.add.at(total, inverse.reshape(-1), np.concatenate([rows for _, rows in parts]))
    return words, total

  def _dense(self, words, rows) -> np.ndarray:
    vlad = np.zeros([self.codebook_size, self.dim], np.float32)
    vlad[words] = rows
    return vlad.reshape(-1)

  def aggregate(self, descriptors, num_features_per_region=None):
    """The aggregated representation of one image (module doc for shapes and dtypes).

    Args:
      descriptors: [N, D] local descriptors (any float dtype; used as float32).
      num_features_per_region: [R] counts of consecutive rows per region
        (sum = N); needed with use_regional_aggregation, checked otherwise.

    Returns:
      (aggregated, visual_words): VLAD float32 [K*D] and int32 -1; ASMK
      float32 [M*D] and int64 [M]; ASMK* uint8 [M*ceil(D/8)] and int64 [M].

    Raises:
      ValueError: descriptors of another dimension, or region counts that do
        not add up to N (or are missing for regional aggregation).
    """
    descriptors, regions = self._check_inputs(descriptors, num_features_per_region)
    if self.regional:
      words, rows = self._regional_sums(descriptors, regions)
      if self.aggregation_type == VLAD and self.config.use_l2_normalization:
        rows = _l2_normalize(rows)
      elif len(regions):
        rows = rows / np.float32(len(regions))
    else:
      words, rows = self._residual_sums(descriptors)
      if self.aggregation_type == VLAD and self.config.use_l2_normalization:
        rows = _l2_normalize(rows)
    if self.aggregation_type == VLAD:
      return self._dense(words, rows), np.array(-1, np.int32)
    norms = np.sqrt(np.sum(rows * rows, axis=1, dtype=np.float32))
    keep = norms > np.float32(np.sqrt(NORM_SQUARED_TOLERANCE))
    normalized = _l2_normalize(rows[keep], axis=1)
    words = words[keep].astype(np.int64)
    if self.aggregation_type == ASMK_STAR:
      return np.packbits(normalized > 0, axis=1).reshape(-1), words
    return normalized.reshape(-1).astype(np.float32), words


def from_config(config, config_path: str | None = None) -> Aggregator:
  """An Aggregator with the codebook of `config.codebook_path` (resolved next to `config_path`).

  Raises:
    FileNotFoundError / ValueError: one line naming the config or the codebook.
  """
  path = aggregation_config_io.resolve_codebook_path(config, config_path)
  centroids = codebook_lib.load_codebook(path, config.codebook_size, config.feature_dimensionality)
  return Aggregator(config, centroids)


# -------------------------------------------------------------------- files


def packed_dim(feature_dimensionality: int) -> int:
  """Bytes per visual word of an ASMK* vector: ceil(D / 8)."""
  return -(-int(feature_dimensionality) // 8)


def write_aggregated(path: str, aggregated: np.ndarray, visual_words=None) -> None:
  """Writes one image's aggregation in DELF's format, atomically.

  A VLAD (visual_words None or DELF's 0-d -1) is a DatumProto; ASMK / ASMK*
  a DatumPairProto (aggregated, visual_words as uint32).

  Raises:
    ValueError: unsupported dtypes; OSError naming `path` if it cannot be written.
  """
  if visual_words is None or np.ndim(visual_words) == 0:
    datum_io.write_to_file(path, np.asarray(aggregated))
    return
  words = np.asarray(visual_words)
  if words.size and (words.min() < 0 or words.max() > np.iinfo(np.uint32).max):
    raise ValueError(f"{path}: visual words out of the uint32 range")
  datum_io.write_pair_to_file(path, np.asarray(aggregated), words.astype(np.uint32))


def aggregation_type_of(path: str) -> int:
  """VLAD / ASMK / ASMK_STAR from DELF's extension of `path` (ValueError if none)."""
  for extension in sorted(_TYPE_OF_EXTENSION, key=len, reverse=True):
    if path.endswith(extension):
      return _TYPE_OF_EXTENSION[extension]
  raise ValueError(
    f"{path}: not an aggregation file (extensions: {', '.join(EXTENSIONS.values())})"
  )


def check_aggregated(aggregated, visual_words, aggregation_type, config=None) -> None:
  """Raises ValueError (a phrase) if arrays are not a valid aggregation of that type / config."""
  if aggregated.ndim != 1:
    raise ValueError(f"aggregated vector has shape {list(aggregated.shape)}, not 1-D")
  dim = config.feature_dimensionality if config is not None else None
  if aggregation_type == VLAD:
    if config is not None and aggregated.size != config.codebook_size * dim:
      raise ValueError(
        f"VLAD of {aggregated.size} values, the config wants {config.codebook_size * dim}"
      )
    if not np.isfinite(aggregated).all():
      raise ValueError("VLAD has non-finite values")
    return
  words = np.asarray(visual_words)
  if words.ndim != 1 or (words.size > 1 and not (np.diff(words.astype(np.int64)) > 0).all()):
    raise ValueError("visual words are not a strictly increasing 1-D list")
  if config is not None and words.size and int(words.max()) >= config.codebook_size:
    raise ValueError(f"visual word {int(words.max())} >= codebook_size {config.codebook_size}")
  if words.size == 0:
    if aggregated.size:
      raise ValueError(f"{aggregated.size} values for 0 visual words")
    return
  per_word = aggregated.size // words.size
  if aggregated.size % words.size or (
    dim is not None and per_word != (packed_dim(dim) if aggregation_type == ASMK_STAR else dim)
  ):
    raise ValueError(f"{aggregated.size} values do not split over {words.size} visual words")
  if aggregation_type == ASMK_STAR and aggregated.size and int(aggregated.max()) > 255:
    raise ValueError("ASMK* packed bytes above 255")
  if aggregation_type == ASMK and not np.isfinite(aggregated).all():
    raise ValueError("ASMK vectors have non-finite values")


def read_aggregated(path: str, aggregation_type=None, config=None):
  """Reads one image's aggregation file (DELF's format) and checks it.

  Args:
    path: the file.
    aggregation_type: VLAD / ASMK / ASMK_STAR; None: from the extension.
    config: an AggregationConfig to check sizes against (optional).

  Returns:
    (aggregated, visual_words) as Aggregator.aggregate returns them: VLAD
    float32 [K*D] and int32 -1; ASMK float32 [M*D] and int64 [M]; ASMK*
    uint8 [M*ceil(D/8)] and int64 [M].

  Raises:
    FileNotFoundError: naming `path`.
    OSError: naming `path`, if it is corrupt or inconsistent.
    ValueError: unknown extension with no `aggregation_type`.
  """
  kind = aggregation_type_of(path) if aggregation_type is None else aggregation_type
  if kind == VLAD:
    aggregated, words = datum_io.read_from_file(path), np.array(-1, np.int32)
  else:
    aggregated, words = datum_io.read_pair_from_file(path)
  try:
    check_aggregated(aggregated, words, kind, config)
  except ValueError as e:
    raise OSError(f"{path}: invalid {aggregation_config_io.type_name(kind)} file: {e}") from e
  if kind == VLAD:
    return aggregated.astype(np.float32), words
  words = words.astype(np.int64)
  if kind == ASMK_STAR:
    return aggregated.astype(np.uint8), words
  return aggregated.astype(np.float32), words


def aggregated_file_problem(path: str, config) -> str | None:
  """Why `path` is not a valid output for `config` (resume), or None if it is."""
  if not os.path.isfile(path):
    return "missing"
  try:
    read_aggregated(path, config.aggregation_type, config)
  except (OSError, ValueError) as e:
    return str(e)
  return None
