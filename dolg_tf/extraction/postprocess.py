"""Pure post-processing of the SavedModel's global descriptors: scale pooling, PCA, finite checks.

NumPy only (no TensorFlow). Global descriptors, DELF's order:
  - Scale pooling (`pool_scales`), per `global_config.scale_pooling`:
    AVERAGE: each scale L2-normalised, averaged, L2-normalised (official
      DOLG; equals the signature's own `global_descriptor`).
    GEM: each scale L2-normalised, then a signed generalised mean
      m = mean_s(sign(v_s) * |v_s|^p), g = sign(m) * |m|^(1/p),
      L2-normalised. The signed power keeps the mean defined for DOLG's
      signed descriptors (a clamp max(x, eps)^p as in spatial GeM would throw
      away every negative component); p = 1 is AVERAGE, and for large p each
      component tends to the scale value of largest magnitude.
  - Optional PCA (`apply_pca`, `PcaProjection`), DELF's ApplyPcaAndWhitening:
    y = P[:pca_dim] @ (x - mean), with whitening y /= sqrt(var[:pca_dim] + eps),
    then L2-normalised. With `global_config.pca_per_scale` (DELF's order, set
    for translated DelfConfigs) PCA comes before pooling instead: each scale's
    L2-normalised descriptor is projected and L2-normalised, then pooled
    (AVERAGE = DELF's sum over scales and L2 normalisation).
  `GlobalPostprocess` applies both as a DolgConfig's global_config says.
  - `refuse_non_finite`: NaN / inf from the model fail the image
    (NonFiniteDescriptorError), never a silent wrong descriptor.
"""

import numpy as np

from dolg_tf.io import config_io, datum_io
from dolg_tf.utils import arrays

DolgConfig = config_io.DolgConfig
ScalePooling = DolgConfig.GlobalConfig

# Added to the PCA variances before the square root when whitening.
WHITENING_EPSILON = 1e-12


def pool_scales(per_scale: np.ndarray, method: int = ScalePooling.AVERAGE, p: float = 3.0):
  """Combines per-scale descriptors [S, D] into one L2-normalised descriptor [D].

  Args:
    per_scale: float [S, D] descriptors, one row per scale.
    method: `DolgConfig.GlobalConfig.AVERAGE`, `GEM`, `MAX` or `SCALE_GEM`
      (see the module doc).
    p: GEM / SCALE_GEM exponent (> 0).

  Returns:
    float32 [D].

  Raises:
    ValueError: unknown method, non-positive p or no scales.
  """
  per_scale = np.asarray(per_scale, dtype=np.float64)
  if per_scale.ndim != 2 or per_scale.shape[0] == 0:
    raise ValueError(f"expected per-scale descriptors [S>0, D], got shape {per_scale.shape}")
  normalized = arrays.l2_normalize(per_scale, axis=1, dtype=np.float64)
  if method == ScalePooling.AVERAGE:
    pooled = normalized.mean(axis=0)
  elif method == ScalePooling.GEM:
    if not p > 0:
      raise ValueError(f"GEM scale pooling needs p > 0, got {p}")
    m = np.mean(np.sign(normalized) * np.abs(normalized) ** p, axis=0)
    pooled = np.sign(m) * np.abs(m) ** (1.0 / p)
  elif method == ScalePooling.MAX:
    pooled = normalized.max(axis=0)
  elif method == ScalePooling.SCALE_GEM:
    if not p > 0:
      raise ValueError(f"SCALE_GEM scale pooling needs p > 0, got {p}")
    gamma = normalized.min()
    pooled = np.mean((normalized - gamma) ** p, axis=0) ** (1.0 / p) + gamma
  else:
    raise ValueError(f"unknown scale pooling {method}")
  return arrays.l2_normalize(pooled.astype(np.float32))


def apply_pca(
  x: np.ndarray,
  mean: np.ndarray,
  projection: np.ndarray,
  pca_dim: int,
  variances: np.ndarray | None = None,
  epsilon: float = WHITENING_EPSILON,
) -> np.ndarray:
  """DELF's ApplyPcaAndWhitening followed by L2 normalisation.

  Args:
    x: float [D] or [N, D] descriptors.
    mean: float [D].
    projection: float [K, D], rows = principal directions (K >= pca_dim).
    pca_dim: number of rows kept.
    variances: float [>= pca_dim] to whiten with, or None (no whitening).
    epsilon: added to the variances before the square root.

  Returns:
    float32 [pca_dim] or [N, pca_dim], L2-normalised.
  """
  x = np.asarray(x, dtype=np.float64)
  projected = (x - mean) @ np.asarray(projection[:pca_dim], dtype=np.float64).T
  if variances is not None:
    projected = projected / np.sqrt(np.asarray(variances[:pca_dim], dtype=np.float64) + epsilon)
  return arrays.l2_normalize(projected.astype(np.float32))


class NonFiniteDescriptorError(ValueError):
  """The model gave NaN or inf descriptor values for an image (nothing is returned)."""


def refuse_non_finite(values: np.ndarray, what: str, image: np.ndarray) -> None:
  """Raises NonFiniteDescriptorError if float `values` hold NaN or inf.

  Args:
    values: a descriptor (or descriptors) of `image`.
    what: what `values` are, for the message ('global descriptor', ...).
    image: the input image, named by its size in the message.
  """
  values = np.asarray(values)
  if values.dtype.kind != "f":
    return
  bad = int(np.count_nonzero(~np.isfinite(values)))
  if bad:
    size = "x".join(str(d) for d in np.shape(image)[:2])
    raise NonFiniteDescriptorError(
      f"non-finite {what}: {bad} of {values.size} values are NaN or inf (the {size} input image)"
    )


def _load_array(path: str) -> np.ndarray:
  if path.endswith(".npy"):
    try:
      return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise OSError(f"{path}: cannot read .npy file ({e})") from e
  return datum_io.read_from_file(path)


class PcaProjection:
  """PCA (+ optional whitening) parameters read from .npy or DatumProto files."""

  def __init__(
    self,
    parameters: DolgConfig.PcaParameters,
    config_path: str | None = None,
    field: str = "global_config.pca_parameters",
  ):
    """Loads the files named in `parameters` (`field` of the config, for errors).

    Raises:
      FileNotFoundError / IOError: a file is missing or unreadable (named).
      ValueError: inconsistent shapes (the file is named).
    """
    resolve = lambda name: config_io.resolve_path(
      getattr(parameters, name), f"{field}.{name}", config_path
    )
    self.mean_path = resolve("mean_path")
    self.projection_path = resolve("projection_matrix_path")
    self.mean = _load_array(self.mean_path).astype(np.float32)
    self.projection = _load_array(self.projection_path).astype(np.float32)
    self.pca_dim = int(parameters.pca_dim)
    self.variances = None
    self.variances_path = None
    if self.mean.ndim != 1:
      raise ValueError(f"{self.mean_path}: PCA mean must be 1-D, got shape {self.mean.shape}")
    dim = self.mean.shape[0]
    if self.projection.ndim != 2 or self.projection.shape[1] != dim:
      raise ValueError(
        f"{self.projection_path}: PCA projection must be [K, {dim}], "
        f"got shape {self.projection.shape}"
      )
    if self.pca_dim > self.projection.shape[0]:
      raise ValueError(
        f"{self.projection_path}: pca_dim {self.pca_dim} exceeds the "
        f"{self.projection.shape[0]} rows of the projection"
      )
    if parameters.use_whitening:
      self.variances_path = resolve("pca_variances_path")
      self.variances = _load_array(self.variances_path).astype(np.float32).ravel()
      if self.variances.shape[0] < self.pca_dim:
        raise ValueError(
          f"{self.variances_path}: {self.variances.shape[0]} variances, "
          f"fewer than pca_dim {self.pca_dim}"
        )
      if np.any(self.variances[: self.pca_dim] < 0):
        raise ValueError(f"{self.variances_path}: negative PCA variances")

  @property
  def input_dim(self) -> int:
    return int(self.mean.shape[0])

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[-1] != self.input_dim:
      raise ValueError(
        f"{self.mean_path}: PCA expects {self.input_dim}-D descriptors, got {x.shape[-1]}-D"
      )
    return apply_pca(x, self.mean, self.projection, self.pca_dim, self.variances)


class GlobalPostprocess:
  """The per-scale descriptors [S, D] of one image -> its global descriptor, per a GlobalConfig.

  Attributes:
    scale_pooling, scale_gem_p (global_config.gem_p: the exponent of GEM /
      SCALE_GEM scale pooling), pca_per_scale: from the config's global_config.
    pca: a PcaProjection, or None.
    input_dim: D of the per-scale descriptors last seen (None before any).
  """

  def __init__(self, global_config, pca: "PcaProjection | None" = None):
    self.scale_pooling = global_config.scale_pooling
    self.scale_gem_p = float(global_config.gem_p)
    self.pca_per_scale = bool(global_config.pca_per_scale)
    self.pca = pca
    self.input_dim = None

  @property
  def output_dim(self) -> int | None:
    """D' of the global descriptor: pca_dim with PCA, else `input_dim`."""
    return self.pca.pca_dim if self.pca is not None else self.input_dim

  def __call__(self, per_scale: np.ndarray) -> np.ndarray:
    """float32 [D'] (D' = pca_dim with PCA); NaN / inf pass through without numpy warnings."""
    self.input_dim = per_scale.shape[-1]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
      if self.pca is not None and self.pca_per_scale:
        # DELF's order: each scale L2-normalised, projected and L2-normalised, then pooled.
        per_scale = self.pca(arrays.l2_normalize(per_scale, axis=1, dtype=np.float64))
        return pool_scales(per_scale, self.scale_pooling, self.scale_gem_p)
      pooled = pool_scales(per_scale, self.scale_pooling, self.scale_gem_p)
      return self.pca(pooled) if self.pca is not None else pooled
