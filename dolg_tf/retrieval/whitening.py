"""Learned post-processing of global descriptors: learned whitening, PCA-whitening and PCA.

Three ways to learn a mean m [D] and a projection P [D, D] (rows strongest
first) from descriptors X [N, D] (one row per image; DELF's and cirtorch's
code hold them as columns):

  learned (`learn_whitening`, DELF's whiten.learn_whitening, Radenovic et
    al., TPAMI 2018, section 3.4): from matching pairs (q_i, p_i):
      m   = mean of the query descriptors X[q_i] (with repeats, as listed);
      S_w = sum_i (X[q_i] - X[p_i])^T (X[q_i] - X[p_i]) / num_pairs;
      W   = L^-1 with S_w + alpha I = L L^T (Cholesky, L lower triangular);
        alpha = 0, else 1e-10, 1e-9, ... until the factorisation succeeds
        (DELF's `cholesky`);
      S_b = sum_n W (x_n - m)^T (x_n - m) W^T over ALL N descriptors (no 1/N);
      P   = E^T W with E the eigenvectors of S_b, largest eigenvalue first.
  pca_whitening (`learn_pca_whitening`, the pcawhitenlearn of Radenovic's
    cirtorch code; DELF's whiten.py has no such function):
      m = mean of X, C = (X - m)^T (X - m) / N, C = E diag(lambda) E^T,
      P = diag(lambda)^-1/2 E^T.
  pca (`learn_pca`): m and E as above, P = E^T (no whitening).

`write_parameter_files` writes (m, P) as the mean / projection / variances
files of a DolgConfig's or DelfConfig's pca_parameters (extraction's
PcaProjection: y = P'[:k] (x - m'), optionally / sqrt(v[:k] + 1e-12), then
L2-normalised):
  learned        mean = m, projection = P (whitening inside), no variances,
                 use_whitening: false;
  pca_whitening  mean = m, projection = E^T, variances = lambda,
                 use_whitening: true (DELF's own PCA files have this layout);
  pca            the same files, use_whitening: false.
Extraction then gives apply_whitening's descriptors up to float32 rounding and
the two epsilons (1e-6 on the norm here, 1e-12 on the variances there).

`apply_whitening` is DELF's apply_whitening: y = P[:k] (x - m) and
y / (||y|| + 1e-6), k = output_dim (all rows when None).

Eigenvectors: DELF calls np.linalg.eig, whose signs are LAPACK's choice; here
np.linalg.eigh (symmetric, real) is used and each eigenvector's largest
component (in absolute value, the first such) is made positive, so results are
deterministic up to rounding; among equal eigenvalues any basis is as good as
another and rounding picks one (`degenerate_cut` says when a cut splits
them). A row of P may differ in sign from DELF's; inner products between
whitened descriptors, hence rankings, do not.
"""

import dataclasses
import io
import os

import numpy as np
from absl import logging
from google.protobuf import text_format

from dolg_tf.io import config_io, datum_io
from dolg_tf.protos import delf_config_pb2
from dolg_tf.utils import files as file_utils

# DELF's apply_whitening adds this to the norm before dividing.
APPLY_EPSILON = 1e-6
# DELF's cholesky: first diagonal regularisation tried, multiplied by 10 after.
FIRST_ALPHA = 1e-10
# Past this the covariance is not a covariance (DELF would loop on).
MAX_ALPHA = 1e10
# Eigenvalues below this fraction of the largest count as zero (rank).
RANK_TOLERANCE = 1e-10
METHODS = ("learned", "pca_whitening", "pca")
# Eigenvalues within this fraction of the largest count as equal (degenerate_cut).
DEGENERATE_RTOL = 1e-6
# Pair differences / descriptors formed at a time (a [BLOCK, D] float64 array).
BLOCK = 8192


@dataclasses.dataclass(frozen=True)
class LearnedProjection:
  """What one of the learning functions found.

  Attributes:
    method: "learned", "pca_whitening" or "pca".
    mean: float64 [D], m.
    projection: float64 [D, D], P (rows strongest first; whitening included
      for "learned" and "pca_whitening").
    eigenvalues: float64 [D], descending: of S_b ("learned") or of the
      covariance (the PCA methods).
    eigenvectors: float64 [D, D] rows = E^T (the PCA methods; for "learned",
      the rotation part).
    regularization: alpha added to S_w's diagonal ("learned"; 0 otherwise).
  """

  method: str
  mean: np.ndarray
  projection: np.ndarray
  eigenvalues: np.ndarray
  eigenvectors: np.ndarray
  regularization: float = 0.0

  @property
  def dim(self) -> int:
    return int(self.mean.shape[0])


def _as_matrix(descriptors, what: str = "descriptors") -> np.ndarray:
  """[N, D] floats (float32 stays float32: large sets are used a block at a time)."""
  x = np.asarray(descriptors)
  if x.dtype not in (np.float32, np.float64):
    x = x.astype(np.float64)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{what}: expected a non-empty [N, D] matrix, got shape {x.shape}")
  if not np.isfinite(x).all():
    bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
    raise ValueError(f"{what}: row {bad} holds NaN or inf")
  return x


def _blocks(n: int):
  return (slice(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK))


def _weighted_mean(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """sum_n w_n x_n / sum_n w_n in float64, a block of rows at a time."""
  total = np.zeros(x.shape[1])
  for rows in _blocks(x.shape[0]):
    total += weights[rows] @ x[rows].astype(np.float64)
  return total / weights.sum()


def _scatter(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
  """sum_n (x_n - m)^T (x_n - m) [D, D] in float64, a block of rows at a time."""
  scatter = np.zeros([x.shape[1], x.shape[1]])
  for rows in _blocks(x.shape[0]):
    centred = x[rows].astype(np.float64) - mean
    scatter += centred.T @ centred
  return scatter


def sorted_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Eigen-decomposition of a symmetric matrix, largest eigenvalue first, signs fixed.

  Returns:
    (eigenvalues [D] descending, eigenvectors [D, D] as columns), each
    column's largest-magnitude component positive (module doc).
  """
  matrix = np.asarray(matrix, dtype=np.float64)
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  order = np.argsort(values, kind="stable")[::-1]
  values, vectors = values[order], vectors[:, order]
  pivots = np.argmax(np.abs(vectors), axis=0)
  signs = np.sign(vectors[pivots, np.arange(vectors.shape[1])])
  signs[signs == 0] = 1.0
  return values, vectors * signs


def cholesky(matrix: np.ndarray) -> tuple[np.ndarray, float]:
  """Lower Cholesky factor L of matrix + alpha I, with DELF's growing alpha.

  alpha = 0 first; if the factorisation fails, 1e-10, then 10 times more
  until it succeeds (DELF's whiten.cholesky).

  Returns:
    (L [D, D] lower triangular, alpha).

  Raises:
    ValueError: alpha passed MAX_ALPHA (not a covariance matrix).
  """
  matrix = np.asarray(matrix, dtype=np.float64)
  alpha = 0.0
  while True:
    try:
      return np.linalg.cholesky(matrix + alpha * np.eye(matrix.shape[0])), alpha
    except np.linalg.LinAlgError:
      alpha = FIRST_ALPHA if alpha == 0 else alpha * 10
      if alpha > MAX_ALPHA:
        raise ValueError("the matrix is not positive semi-definite") from None
      logging.warning("covariance not positive definite: adding %.0e on its diagonal", alpha)


def pair_covariance(descriptors, query_idx, positive_idx) -> np.ndarray:
  """S_w [D, D]: the mean outer product of the matching pairs' differences."""
  x = _as_matrix(descriptors)
  q, p = _pair_indices(query_idx, positive_idx, x.shape[0])
  covariance = np.zeros([x.shape[1], x.shape[1]])
  for block in _blocks(q.size):  # bounded memory for many pairs
    difference = x[q[block]].astype(np.float64) - x[p[block]]
    covariance += difference.T @ difference
  return covariance / q.size


def _pair_indices(query_idx, positive_idx, n: int) -> tuple[np.ndarray, np.ndarray]:
  q = np.asarray(query_idx, dtype=np.int64).ravel()
  p = np.asarray(positive_idx, dtype=np.int64).ravel()
  if q.shape != p.shape or q.size == 0:
    raise ValueError(f"need as many positives as queries (> 0), got {q.size} and {p.size}")
  for name, idx in (("query", q), ("positive", p)):
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
      raise ValueError(f"{name} index out of range [0, {n}): {int(bad[0])}")
  return q, p


def rank(matrix: np.ndarray, tolerance: float = RANK_TOLERANCE) -> int:
  """Numerical rank of a symmetric positive semi-definite matrix."""
  values = np.linalg.eigvalsh(np.asarray(matrix, dtype=np.float64))
  top = float(values.max()) if values.size else 0.0
  return int(np.count_nonzero(values > tolerance * top)) if top > 0 else 0


def learn_whitening(descriptors, query_idx, positive_idx) -> LearnedProjection:
  """Learned whitening from matching pairs (module doc; DELF's whiten.learn_whitening).

  Args:
    descriptors: [N, D] (L2-normalised) descriptors, one row per image.
    query_idx: [M] row indices of the pairs' first images.
    positive_idx: [M] row indices of their matching images.

  Returns:
    A LearnedProjection with method "learned".

  Raises:
    ValueError: bad shapes, indices out of range, NaN / inf.
  """
  x = _as_matrix(descriptors)
  q, p = _pair_indices(query_idx, positive_idx, x.shape[0])
  mean = _weighted_mean(x, np.bincount(q, minlength=x.shape[0]).astype(np.float64))
  lower, alpha = cholesky(pair_covariance(x, q, p))
  whiten = np.linalg.inv(lower)
  # sum_n W (x_n - m)(x_n - m)^T W^T, the scatter formed first (memory: D x D, not N x D).
  values, vectors = sorted_eigh(whiten @ _scatter(x, mean) @ whiten.T)
  return LearnedProjection("learned", mean, vectors.T @ whiten, values, vectors.T, alpha)


def _pca(descriptors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  x = _as_matrix(descriptors)
  mean = _weighted_mean(x, np.ones(x.shape[0]))
  values, vectors = sorted_eigh(_scatter(x, mean) / x.shape[0])
  return mean, values, vectors.T


def learn_pca_whitening(descriptors) -> LearnedProjection:
  """PCA-whitening (cirtorch's pcawhitenlearn): P = diag(lambda)^-1/2 E^T.

  Raises:
    ValueError: bad input, or a zero or negative eigenvalue (rank-deficient
      covariance: fewer descriptors than D + 1, or descriptors in a subspace).
  """
  mean, values, rows = _pca(descriptors)
  top = max(float(values[0]), 0.0)
  if values[-1] <= RANK_TOLERANCE * top:
    found = int(np.count_nonzero(values > RANK_TOLERANCE * top))
    raise ValueError(
      f"the descriptors' covariance is rank-deficient (rank {found} of {values.shape[0]}): "
      "PCA-whitening would divide by zero"
    )
  return LearnedProjection("pca_whitening", mean, rows / np.sqrt(values)[:, None], values, rows)


def learn_pca(descriptors) -> LearnedProjection:
  """Plain PCA: P = E^T (rows = principal directions, strongest first)."""
  mean, values, rows = _pca(descriptors)
  return LearnedProjection("pca", mean, rows, values, rows)


def learn(method: str, descriptors, query_idx=None, positive_idx=None) -> LearnedProjection:
  """`learn_whitening`, `learn_pca_whitening` or `learn_pca` by name (METHODS)."""
  if method == "learned":
    return learn_whitening(descriptors, query_idx, positive_idx)
  if method == "pca_whitening":
    return learn_pca_whitening(descriptors)
  if method == "pca":
    return learn_pca(descriptors)
  raise ValueError(f"unknown method {method!r}, expected one of {', '.join(METHODS)}")


def degenerate_cut(eigenvalues, output_dim: int, rtol: float = DEGENERATE_RTOL):
  """Whether keeping `output_dim` directions cuts through a set of equal eigenvalues.

  Within equal eigenvalues any orthonormal basis is as good as another, so
  which of them a cut keeps is arbitrary (learned whitening from all pairs of
  C equally sized landmarks has D - C equal eigenvalues: the C - 1
  between-landmark directions and the query mean's offset stand out).

  Returns:
    None, or (first, last): the 0-based index range of the equal eigenvalues
    (within rtol of the largest eigenvalue) that the cut splits.
  """
  values = np.asarray(eigenvalues, dtype=np.float64)
  k = int(output_dim)
  if not 0 < k < values.size:
    return None
  close = lambda i: abs(values[i] - values[k]) <= rtol * abs(values[0])
  if not close(k - 1):
    return None
  first, last = k - 1, k
  while first > 0 and close(first - 1):
    first -= 1
  while last + 1 < values.size and close(last + 1):
    last += 1
  return first, last


def apply_whitening(descriptors, mean, projection, output_dim: int | None = None) -> np.ndarray:
  """DELF's apply_whitening on rows: y = P[:k] (x - m), y / (||y|| + 1e-6).

  Args:
    descriptors: [N, D] or [D].
    mean: [D].
    projection: [K, D].
    output_dim: k (None: all K rows).

  Returns:
    float64 [N, k] (or [k]).
  """
  x = np.asarray(descriptors, dtype=np.float64)
  projection = np.asarray(projection, dtype=np.float64)
  k = projection.shape[0] if output_dim is None else int(output_dim)
  if not 0 < k <= projection.shape[0]:
    raise ValueError(f"output_dim must be in [1, {projection.shape[0]}], got {k}")
  y = (x - np.asarray(mean, dtype=np.float64)) @ projection[:k].T
  return y / (np.linalg.norm(y, axis=-1, keepdims=True) + APPLY_EPSILON)


FORMATS = ("npy", "datum")
# File name stems in the output folder; the suffix is .npy or .datum.
MEAN_NAME, PROJECTION_NAME, VARIANCES_NAME = "mean", "projection", "variances"


@dataclasses.dataclass(frozen=True)
class ParameterFiles:
  """The pca_parameters files of one LearnedProjection (module doc)."""

  mean_path: str
  projection_path: str
  variances_path: str | None
  use_whitening: bool


def parameter_arrays(learned: LearnedProjection):
  """(mean [D], projection [D, D], variances [D] or None, use_whitening), float32 (module doc)."""
  f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
  if learned.method == "learned":
    return f32(learned.mean), f32(learned.projection), None, False
  variances = f32(np.maximum(learned.eigenvalues, 0.0))
  return (
    f32(learned.mean),
    f32(learned.eigenvectors),
    variances,
    learned.method == "pca_whitening",
  )


def _write_array(path: str, array: np.ndarray, file_format: str) -> None:
  if file_format == "datum":
    datum_io.write_to_file(path, array)
    return
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  file_utils.atomic_write_bytes(path, buffer.getvalue())


def write_parameter_files(
  learned: LearnedProjection, output_dir: str, file_format: str = "npy"
) -> ParameterFiles:
  """Writes the mean / projection (/ variances) files, each atomically.

  Args:
    learned: what a learning function returned.
    output_dir: an existing folder.
    file_format: "npy" or "datum" (DELF's DatumProto files, which DELF's own
      pca_parameters read).

  Returns:
    ParameterFiles with absolute paths.
  """
  if file_format not in FORMATS:
    raise ValueError(f"unknown file format {file_format!r}, expected one of {FORMATS}")
  mean, projection, variances, use_whitening = parameter_arrays(learned)
  path = lambda stem: os.path.abspath(os.path.join(output_dir, f"{stem}.{file_format}"))
  _write_array(path(MEAN_NAME), mean, file_format)
  _write_array(path(PROJECTION_NAME), projection, file_format)
  variances_path = None
  if variances is not None:
    variances_path = path(VARIANCES_NAME)
    _write_array(variances_path, variances, file_format)
  return ParameterFiles(path(MEAN_NAME), path(PROJECTION_NAME), variances_path, use_whitening)


def _fill_pca(parameters, files: ParameterFiles, pca_dim: int) -> None:
  parameters.mean_path = files.mean_path
  parameters.projection_matrix_path = files.projection_path
  parameters.pca_dim = int(pca_dim)
  parameters.use_whitening = files.use_whitening
  if files.variances_path:
    parameters.pca_variances_path = files.variances_path


def dolg_global_config(files: ParameterFiles, pca_dim: int):
  """A DolgConfig.GlobalConfig with use_pca and pca_parameters naming `files`."""
  global_config = config_io.DolgConfig.GlobalConfig(use_pca=True)
  _fill_pca(global_config.pca_parameters, files, pca_dim)
  return global_config


def config_snippet(files: ParameterFiles, pca_dim: int, delf: bool = False) -> str:
  """Ready-to-paste text: DolgConfig's `global_config { ... }` or DelfConfig's `delf_global_config`.

  Args:
    files: what write_parameter_files wrote.
    pca_dim: output dimension.
    delf: DELF's DelfConfig layout (its PCA is per scale, before the scales
      are summed: not the same descriptors as one PCA of the pooled one).
  """
  if delf:
    section, name = delf_config_pb2.DelfGlobalFeatureConfig(use_pca=True), "delf_global_config"
  else:
    section, name = dolg_global_config(files, pca_dim), "global_config"
  if delf:
    _fill_pca(section.pca_parameters, files, pca_dim)
  body = text_format.MessageToString(section, indent=2)
  return f"{name} {{\n{body}}}\n"
