"""Geometric verification of two images: local feature matching + RANSAC (DELG re-ranking).

    matches, fit = verify(query_features, index_features, **config.verify_kwargs())

Every query local descriptor is matched to its nearest neighbour among the
database image's descriptors (a KD-tree, `scipy.spatial.cKDTree`, accepting
neighbours closer than `distance_threshold`, DELF's MatchFeatures; Hamming
distance for DELG* binarised descriptors), and an affine transform (or a
homography) is fitted to the matched locations with OpenCV's RANSAC. The number
of RANSAC inliers is the image's score in re-ranking (rerank.py).

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
help (docs/RETRIEVAL_AND_EVALUATION.md, "Geometric verification").

Settings: GeometricVerificationConfig holds every option of verification and
of the re-ranking window (DELF's defaults; an unset bound is None), declared
once; it is the `geometric_verification` part of retrieval_config.RetrievalConfig,
whose `--gv_*` flags are generated from it.
"""

import dataclasses

import cv2
import numpy as np
from scipy import spatial

from dolg_tf.io import binarize, feature_io

# DELF-style defaults.
DEFAULT_DISTANCE_THRESHOLD = 0.8  # L2, unit-norm float descriptors
DEFAULT_RESIDUAL_THRESHOLD = 20.0  # pixels
DEFAULT_MAX_TRIALS = 1000
DEFAULT_TOP_K = 100
MODELS = ("affine", "homography")
_MIN_SAMPLES = {"affine": 3, "homography": 4}
# Above Na * Nb pairs, float matching uses scipy's cKDTree instead of a dense product.
_DENSE_PAIRS = 4_000_000


def _positive_or_none(value, name: str) -> None:
  if value is not None and not value > 0:
    raise ValueError(f"{name}: must be > 0 or None (off), got {value}")


@dataclasses.dataclass(frozen=True)
class GeometricVerificationConfig:
  """Every setting of geometric verification, with DELF's defaults; None = off / default.

  Attributes:
    top_k: images re-ranked per query (non-junk ones; rerank.py).
    min_inliers: inlier counts below this count as 0 (not verified).
    distance_threshold: descriptor match threshold (None: 0.8 L2, or its
      Hamming equivalent for binarised descriptors).
    ratio: Lowe ratio test of the matches (None: off, as DELF).
    model: RANSAC transform, one of MODELS.
    residual_threshold: RANSAC residual threshold (pixels).
    max_trials: RANSAC iterations at most.
    seed: OpenCV RNG seed before each fit (None: not set).
    max_scale_change: reject RANSAC fits that scale any direction by more
      than this (e.g. 3; module doc).
    max_anisotropy: reject RANSAC fits whose singular-value ratio exceeds
      this (e.g. 2; module doc).
  """

  top_k: int = DEFAULT_TOP_K
  min_inliers: int = 0
  distance_threshold: float | None = None
  ratio: float | None = None
  model: str = "affine"
  residual_threshold: float = DEFAULT_RESIDUAL_THRESHOLD
  max_trials: int = DEFAULT_MAX_TRIALS
  seed: int | None = 0
  max_scale_change: float | None = None
  max_anisotropy: float | None = None

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
    """The `verify` / `count_inliers` options (everything but top_k and min_inliers)."""
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
