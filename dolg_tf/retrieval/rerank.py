"""DELG re-ranking: local feature matching + RANSAC geometric verification.

    ranks, _ = query_expansion.search_with_expansion(queries, database, k)
    new_ranks, inliers = rerank.rerank(ranks, query_features, load_index_features, top_k=100)

For each query, the `top_k` best database images of the global ranking are
verified against the query: every query local descriptor is matched to its
nearest neighbour among the database image's descriptors (a KD-tree,
`scipy.spatial.cKDTree`, accepting neighbours closer than
`distance_threshold`, DELF's MatchFeatures; Hamming distance for DELG*
binarised descriptors), and an affine transform (or a homography) is fitted to
the matched locations with OpenCV's RANSAC. The number of RANSAC inliers is
the image's score: the top-k images are re-sorted by (inliers, descending;
then their global rank), the rest of the ranking is unchanged.

Locations are DELF's (y, x); they are swapped to (x, y) for OpenCV.

Implausible transforms (optional, off by default as in DELF). RANSAC takes
the model with the most inliers, whatever it is. When keypoints lie on a
coarse regular grid (small images: receptive-field centres every 16 px /
scale) and descriptors are weak, a degenerate affine map that squeezes the
query onto a line or mirrors it collects many "inliers" between unrelated
images. `max_scale_change` and `max_anisotropy` reject such fits (the image
then counts 0 inliers): the singular values s1 >= s2 of the transform's
linear part must satisfy 1/max_scale_change <= s2, s1 <= max_scale_change
and s1 / s2 <= max_anisotropy, and its determinant must be positive (no
mirroring). For a homography the linear part at the origin, H[:2, :2] / H[2, 2],
is checked. On the synthetic DELG demo this check is what makes re-ranking
help (see the README).

Junk images (Revisited Oxford/Paris). DELF re-ranks once per protocol: its
top-100 window is made of the first 100 *non-junk* images of that protocol, so
junk images do not use up re-ranking slots, and the window (hence which images
move) differs between Easy, Medium and Hard. Re-ranking the first 100
positions once and evaluating every protocol on that ranking is NOT the same
when junk images sit in the window (fewer non-junk images get verified), so
`rerank_protocols` (perform_retrieval.evaluate's geometric verification)
re-ranks per protocol as DELF does, with `junk` set to that protocol's junk
list; the inlier counts are computed once per (query, image) and shared
between protocols, so the extra cost is only sorting. Where the junk images
of the window end up is irrelevant: the metrics remove junk from a ranking
before scoring it.

Images without local features (e.g. +1M distractor shards, which hold global
descriptors only): the index loader returns None for them and they count 0
inliers without being matched. They still use up their slot of the window, so
after re-ranking they sit below every verified image with inliers and keep
their global order among the images with none.

Settings: GeometricVerificationConfig holds every option of verification
(DELF's defaults; an unset bound is None), declared once; perform_retrieval's
--gv_* flags are generated from it.
"""

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from absl import logging
from scipy import spatial

from dolg_tf.data import ground_truth
from dolg_tf.io import binarize, feature_io
from dolg_tf.retrieval import metrics

# DELF-style defaults.
DEFAULT_DISTANCE_THRESHOLD = 0.8  # L2, unit-norm float descriptors
DEFAULT_RESIDUAL_THRESHOLD = 20.0  # pixels
DEFAULT_MAX_TRIALS = 1000
DEFAULT_TOP_K = 100
MODELS = ("affine", "homography")
_MIN_SAMPLES = {"affine": 3, "homography": 4}
LOCAL_SUFFIX = ".delg_local"
# Above Na * Nb pairs, float matching uses scipy's cKDTree instead of a dense product.
_DENSE_PAIRS = 4_000_000


def _positive_or_none(value, name: str) -> None:
  if value is not None and not value > 0:
    raise ValueError(f"{name}: must be > 0 or None (off), got {value}")


@dataclasses.dataclass(frozen=True)
class GeometricVerificationConfig:
  """Every setting of geometric verification, with DELF's defaults; None = off / default.

  The `help` metadata is the text of perform_retrieval's `--gv_<name>` flags.
  """

  top_k: int = dataclasses.field(
    default=DEFAULT_TOP_K, metadata={"help": "Images re-ranked per query (non-junk)."}
  )
  min_inliers: int = dataclasses.field(
    default=0, metadata={"help": "Inlier counts below this count as 0 (not verified)."}
  )
  distance_threshold: float | None = dataclasses.field(
    default=None,
    metadata={"help": "Descriptor match threshold (None: 0.8 L2, or its Hamming equivalent)."},
  )
  ratio: float | None = dataclasses.field(
    default=None, metadata={"help": "Lowe ratio test of the matches (None: off, as DELF)."}
  )
  model: str = dataclasses.field(
    default="affine", metadata={"help": "RANSAC transform.", "choices": MODELS}
  )
  residual_threshold: float = dataclasses.field(
    default=DEFAULT_RESIDUAL_THRESHOLD, metadata={"help": "RANSAC residual threshold (pixels)."}
  )
  max_trials: int = dataclasses.field(
    default=DEFAULT_MAX_TRIALS, metadata={"help": "RANSAC iterations at most."}
  )
  seed: int | None = dataclasses.field(
    default=0, metadata={"help": "OpenCV RNG seed before each fit (None: not set)."}
  )
  max_scale_change: float | None = dataclasses.field(
    default=None,
    metadata={"help": "Reject RANSAC fits that scale any direction by more than this (e.g. 3)."},
  )
  max_anisotropy: float | None = dataclasses.field(
    default=None,
    metadata={"help": "Reject RANSAC fits whose singular-value ratio exceeds this (e.g. 2)."},
  )

  def __post_init__(self):
    if self.top_k < 1:
      raise ValueError(f"top_k: must be >= 1, got {self.top_k}")
    if self.min_inliers < 0:
      raise ValueError(f"min_inliers: must be >= 0, got {self.min_inliers}")
    if self.model not in MODELS:
      raise ValueError(f"model: must be one of {MODELS}, got {self.model!r}")
    if not self.residual_threshold > 0:
      raise ValueError(f"residual_threshold: must be > 0, got {self.residual_threshold}")
    if self.max_trials < 1:
      raise ValueError(f"max_trials: must be >= 1, got {self.max_trials}")
    _positive_or_none(self.distance_threshold, "distance_threshold")
    _positive_or_none(self.ratio, "ratio")
    _positive_or_none(self.max_scale_change, "max_scale_change")
    _positive_or_none(self.max_anisotropy, "max_anisotropy")

  def verify_kwargs(self) -> dict:
    """The `count_inliers` options (everything but top_k and min_inliers)."""
    return {
      f.name: getattr(self, f.name)
      for f in dataclasses.fields(self)
      if f.name not in ("top_k", "min_inliers")
    }


def match_features(
  desc_a: np.ndarray,
  desc_b: np.ndarray,
  distance_threshold: float | None = None,
  ratio: float | None = None,
) -> np.ndarray:
  """Nearest-neighbour matches from a to b (DELF's MatchFeatures).

  Args:
    desc_a: query descriptors [Na, D] float, or packed binary [Na, B] (uint).
    desc_b: database descriptors, same kind.
    distance_threshold: float descriptors: L2 distance bound (default 0.8);
      binary: Hamming bound in bits (default `hamming_threshold_for_l2(0.8,
      8 * B)`).
    ratio: optional Lowe ratio test (nearest < ratio * second nearest).

  Returns:
    int64 [M, 2] pairs (row of a, row of b).

  Raises:
    ValueError: one side binary and the other float, or dimensions differ.
  """
  desc_a, desc_b = np.asarray(desc_a), np.asarray(desc_b)
  if binarize.is_binary(desc_a) != binarize.is_binary(desc_b):
    raise ValueError(f"cannot match {desc_a.dtype} descriptors with {desc_b.dtype} ones")
  if binarize.is_binary(desc_a):
    width = desc_a.shape[-1] if desc_a.size else desc_b.shape[-1]
    if distance_threshold is None:
      distance_threshold = binarize.hamming_threshold_for_l2(DEFAULT_DISTANCE_THRESHOLD, 8 * width)
    return binarize.match_binary(desc_a, desc_b, int(distance_threshold), ratio)
  if distance_threshold is None:
    distance_threshold = DEFAULT_DISTANCE_THRESHOLD
  if desc_a.shape[0] == 0 or desc_b.shape[0] == 0:
    return np.zeros([0, 2], dtype=np.int64)
  if desc_a.shape[1] != desc_b.shape[1]:
    raise ValueError(f"descriptor dimensions differ: {desc_a.shape[1]} vs {desc_b.shape[1]}")
  k = 2 if ratio is not None and desc_b.shape[0] > 1 else 1
  if desc_a.shape[0] * desc_b.shape[0] <= _DENSE_PAIRS:
    # Same nearest neighbours as the KD-tree, as one matrix product (a KD-tree
    # degenerates to a slow brute force at D = 128).
    a32, b32 = desc_a.astype(np.float32), desc_b.astype(np.float32)
    squared = (a32**2).sum(1)[:, None] + (b32**2).sum(1)[None, :] - 2.0 * (a32 @ b32.T)
    if k == 1:
      nearest = np.argmin(squared, axis=1)[:, None]
    else:
      nearest = np.argpartition(squared, 1, axis=1)[:, :2]
    d = np.sqrt(np.maximum(np.take_along_axis(squared, nearest, axis=1), 0.0))
    if k == 2:
      order = np.argsort(d, axis=1, kind="stable")
      nearest = np.take_along_axis(nearest, order, axis=1)
      d = np.take_along_axis(d, order, axis=1)
    keep = d[:, 0] <= distance_threshold
    if k == 2:
      keep &= d[:, 0] < ratio * d[:, 1]
    rows = np.nonzero(keep)[0]
    return np.stack([rows, nearest[rows, 0]], axis=1).astype(np.int64)
  tree = spatial.cKDTree(desc_b)
  if k == 2:
    # The ratio test needs the true second distance, so no upper bound here.
    distances, indices = tree.query(desc_a, k=2)
    keep = (distances[:, 0] <= distance_threshold) & (distances[:, 0] < ratio * distances[:, 1])
    indices = indices[:, 0]
  else:
    distances, indices = tree.query(desc_a, k=1, distance_upper_bound=distance_threshold)
    keep = np.isfinite(distances)
  rows = np.nonzero(keep)[0]
  return np.stack([rows, indices[rows]], axis=1).astype(np.int64)


def is_plausible_transform(
  matrix: np.ndarray, max_scale_change: float | None, max_anisotropy: float | None
) -> bool:
  """Whether a fitted 2x3 affine / 3x3 homography passes the checks of the module doc.

  Args:
    matrix: the transform (x, y) -> (x, y).
    max_scale_change: bound on the scale change in any direction (None: no bound).
    max_anisotropy: bound on the ratio of the two singular values (None: no bound).

  Returns:
    True when every given bound holds (always True when both are None).
  """
  if max_scale_change is None and max_anisotropy is None:
    return True
  matrix = np.asarray(matrix, np.float64)
  linear = matrix[:2, :2]
  if matrix.shape == (3, 3):
    if abs(matrix[2, 2]) < 1e-12:
      return False
    linear = linear / matrix[2, 2]
  if np.linalg.det(linear) <= 0:
    return False
  s1, s2 = np.linalg.svd(linear, compute_uv=False)
  if max_scale_change is not None and (s1 > max_scale_change or s2 < 1.0 / max_scale_change):
    return False
  return max_anisotropy is None or s1 <= max_anisotropy * s2


@dataclasses.dataclass
class RansacResult:
  """Outcome of `ransac_inliers`.

  Attributes:
    num_inliers: inlier matches (0 when there were too few matches or no fit).
    mask: bool [M], inliers among the matches.
    matrix: float64 2x3 (affine) or 3x3 (homography) mapping a's (x, y) to
      b's (x, y), or None.
  """

  num_inliers: int
  mask: np.ndarray
  matrix: np.ndarray | None


def ransac_inliers(
  locations_a: np.ndarray,
  locations_b: np.ndarray,
  matches: np.ndarray,
  model: str = "affine",
  residual_threshold: float = DEFAULT_RESIDUAL_THRESHOLD,
  max_trials: int = DEFAULT_MAX_TRIALS,
  confidence: float = 0.999,
  seed: int | None = 0,
  max_scale_change: float | None = None,
  max_anisotropy: float | None = None,
) -> RansacResult:
  """Fits a transform a -> b to the matched keypoints with RANSAC (OpenCV).

  Args:
    locations_a / locations_b: float [Na, 2] / [Nb, 2] keypoints, (y, x).
    matches: int [M, 2] (row of a, row of b), e.g. from `match_features`.
    model: 'affine' (cv2.estimateAffine2D) or 'homography' (cv2.findHomography).
    residual_threshold: maximum reprojection error of an inlier, pixels.
    max_trials: maximum RANSAC iterations.
    confidence: RANSAC stops early once this confident of the best model.
    seed: cv2.setRNGSeed value before fitting (None: leave OpenCV's RNG).
    max_scale_change / max_anisotropy: reject implausible fits (see
      `is_plausible_transform`; None = no check, DELF's behaviour).

  Returns:
    A RansacResult (0 inliers and no matrix for a rejected fit).
  """
  if model not in MODELS:
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")
  matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
  none = RansacResult(0, np.zeros([len(matches)], dtype=bool), None)
  if len(matches) < _MIN_SAMPLES[model]:
    return none
  # (y, x) -> (x, y) for OpenCV.
  src = np.asarray(locations_a, np.float32)[matches[:, 0]][:, ::-1].copy()
  dst = np.asarray(locations_b, np.float32)[matches[:, 1]][:, ::-1].copy()
  if seed is not None:
    cv2.setRNGSeed(int(seed))
  if model == "affine":
    matrix, mask = cv2.estimateAffine2D(
      src,
      dst,
      method=cv2.RANSAC,
      ransacReprojThreshold=float(residual_threshold),
      maxIters=int(max_trials),
      confidence=float(confidence),
      refineIters=10,
    )
  else:
    matrix, mask = cv2.findHomography(
      src,
      dst,
      cv2.RANSAC,
      float(residual_threshold),
      maxIters=int(max_trials),
      confidence=float(confidence),
    )
  if matrix is None or mask is None:
    return none
  if not is_plausible_transform(matrix, max_scale_change, max_anisotropy):
    return none
  mask = mask.reshape(-1).astype(bool)
  return RansacResult(int(mask.sum()), mask, matrix)


def count_inliers(
  query: feature_io.LocalFeatures, index: feature_io.LocalFeatures, *args, **kwargs
) -> int:
  """RANSAC inliers of the matches between two images' local features (args: as `verify`)."""
  return verify(query, index, *args, **kwargs)[1].num_inliers


def verify(
  query: feature_io.LocalFeatures,
  index: feature_io.LocalFeatures,
  distance_threshold: float | None = None,
  ratio: float | None = None,
  model: str = "affine",
  residual_threshold: float = DEFAULT_RESIDUAL_THRESHOLD,
  max_trials: int = DEFAULT_MAX_TRIALS,
  seed: int | None = 0,
  max_scale_change: float | None = None,
  max_anisotropy: float | None = None,
) -> tuple[np.ndarray, RansacResult]:
  """The tentative matches of two images' local features and their RANSAC fit.

  Args:
    query: the query image's local features.
    index: the index image's.
    distance_threshold, ratio: what `match_features` keeps (descriptor
      distance bound, Lowe's ratio test).
    model, residual_threshold, max_trials, seed, max_scale_change,
      max_anisotropy: the RANSAC fit, as `ransac_inliers`.
    (GeometricVerificationConfig.verify_kwargs() gives them all.)

  Returns:
    (int64 [M, 2] matches (row of query, row of index), from `match_features`;
    the RansacResult of `ransac_inliers`, whose mask marks the inliers).
  """
  matches = match_features(query.descriptors, index.descriptors, distance_threshold, ratio)
  result = ransac_inliers(
    query.locations,
    index.locations,
    matches,
    model,
    residual_threshold,
    max_trials,
    seed=seed,
    max_scale_change=max_scale_change,
    max_anisotropy=max_anisotropy,
  )
  return matches, result


def rerank_one(
  ranking: np.ndarray,
  inliers_of: Callable[[int], int],
  top_k: int = DEFAULT_TOP_K,
  min_inliers: int = 0,
  junk: Sequence[int] | set | None = None,
) -> tuple[np.ndarray, dict[int, int]]:
  """Re-sorts the first `top_k` non-junk images of one ranking by inliers.

  Args:
    ranking: int [K] database indices, best first.
    inliers_of: database index -> inlier count (called once per verified image).
    top_k: images verified.
    min_inliers: counts below this are treated as 0 (not verified).
    junk: database indices that neither use up a slot nor get verified.

  Returns:
    (new ranking [K]: the verified images by (inliers desc, global rank), then
    the junk images met in the window, then the rest unchanged;
    {database index: inliers} of the verified images).
  """
  ranking = np.asarray(ranking)
  junk = set() if junk is None else set(int(j) for j in junk)
  window, skipped, end = [], [], 0
  while end < len(ranking) and len(window) < top_k:
    image = int(ranking[end])
    (skipped if image in junk else window).append(image)
    end += 1
  counts = {}
  for image in window:
    n = int(inliers_of(image))
    counts[image] = n if n >= min_inliers else 0
  order = sorted(range(len(window)), key=lambda i: (-counts[window[i]], i))
  head = [window[i] for i in order] + skipped
  return np.concatenate([np.asarray(head, dtype=ranking.dtype), ranking[end:]]), counts


def rerank(
  ranks: np.ndarray,
  query_features: Sequence[feature_io.LocalFeatures] | Callable[[int], feature_io.LocalFeatures],
  index_feature_loader: Callable[[int], feature_io.LocalFeatures],
  top_k: int = DEFAULT_TOP_K,
  min_inliers: int = 0,
  junk: Sequence[Sequence[int]] | None = None,
  cache: dict | None = None,
  **verify_kwargs,
) -> tuple[np.ndarray, list[dict[int, int]]]:
  """Geometric re-ranking of every query's global ranking.

  Args:
    ranks: int [Q, K] global rankings (database indices, best first).
    query_features: per query LocalFeatures, a list or a function of the
      query index.
    index_feature_loader: database index -> LocalFeatures (cache it if
      loading is expensive), or None for an image without local features
      (it counts 0 inliers).
    top_k: images verified per query.
    min_inliers: inlier counts below this count as 0.
    junk: optional per-query junk indices (see the module doc).
    cache: optional {(query, database index): inliers} reused and filled,
      e.g. across protocols.
    **verify_kwargs: `count_inliers` options (distance_threshold, ratio,
      model, residual_threshold, max_trials, seed, max_scale_change,
      max_anisotropy).

  Returns:
    (re-ranked int [Q, K], per query {database index: inliers}).
  """
  ranks = np.asarray(ranks)
  cache = {} if cache is None else cache
  get_query = query_features if callable(query_features) else query_features.__getitem__
  out = np.empty_like(ranks)
  all_counts = []
  for q in range(ranks.shape[0]):
    query = None

    def inliers_of(image, q=q):
      nonlocal query
      key = (q, image)
      if key not in cache:
        index = index_feature_loader(image)
        if index is None:
          cache[key] = 0
        else:
          if query is None:
            query = get_query(q)
          cache[key] = count_inliers(query, index, **verify_kwargs)
      return cache[key]

    out[q], counts = rerank_one(
      ranks[q], inliers_of, top_k, min_inliers, None if junk is None else junk[q]
    )
    all_counts.append(counts)
  return out, all_counts


def local_features_loader(
  features_dir: str, names: Sequence[str], suffix: str = LOCAL_SUFFIX, cache_size: int = 4096
) -> Callable[[int], feature_io.LocalFeatures]:
  """index -> LocalFeatures of `<features_dir>/<names[index]><suffix>`, LRU-cached.

  A missing file raises FileNotFoundError naming it, a corrupt one IOError and
  one with NaN or inf locations, scales or descriptors ValueError (named).
  """

  @functools.lru_cache(maxsize=cache_size)
  def load(index: int) -> feature_io.LocalFeatures:
    path = os.path.join(features_dir, names[index] + suffix)
    features = feature_io.read_from_file(path)
    for field in ("locations", "scales", "descriptors"):
      values = getattr(features, field)
      if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{path}: non-finite local feature {field} (NaN or inf)")
    return features

  return load


def rerank_protocols(
  ranks: np.ndarray,
  gt: ground_truth.RevisitedGroundTruth,
  query_loader: Callable[[int], feature_io.LocalFeatures],
  index_loader: Callable[[int], feature_io.LocalFeatures | None],
  config: GeometricVerificationConfig | None = None,
  ranks_out: dict[str, np.ndarray] | None = None,
) -> dict[str, metrics.MapResult]:
  """Revisited-protocol results of the global `ranks` re-ranked per protocol (module doc).

  Args:
    ranks: int [Q, K] global rankings (database indices, best first).
    gt: the ground truth (queries and the first database indices are its images).
    query_loader: query index -> LocalFeatures.
    index_loader: database index -> LocalFeatures, or None for an image
      without local features (a distractor): 0 inliers.
    config: the verification settings (default GeometricVerificationConfig()).
    ranks_out: if given, filled with {protocol: re-ranked int [Q, K]}.

  Returns:
    {protocol: MapResult} after re-ranking.
  """
  config = config or GeometricVerificationConfig()
  cache = {}
  after = {}
  start = time.time()
  for protocol in ground_truth.PROTOCOLS:
    protocol_gnd = ground_truth.protocol_ground_truth(gt, protocol)
    junk = [entry["junk"] for entry in protocol_gnd]
    new_ranks, _ = rerank(
      ranks,
      query_loader,
      index_loader,
      config.top_k,
      config.min_inliers,
      junk=junk,
      cache=cache,
      **config.verify_kwargs(),
    )
    after[protocol] = metrics.compute_map(new_ranks, protocol_gnd, metrics.DEFAULT_KAPPAS)
    if ranks_out is not None:
      ranks_out[protocol] = new_ranks
  elapsed = time.time() - start
  logging.info(
    "verified %d (query, image) pairs in %.1fs (%.3fs per query)",
    len(cache),
    elapsed,
    elapsed / max(1, len(ranks)),
  )
  return after
