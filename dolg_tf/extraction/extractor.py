"""Global descriptors of images from an exported SavedModel, configured by a DolgConfig.

    config = config_io.load_dolg_config("protos/dolg.pbtxt")
    extractor = GlobalExtractor(config, config_path="protos/dolg.pbtxt")
    descriptor = extractor.extract_from_file("image.jpg")          # float32 [D]

Only the exported SavedModel is used (export/export_model.py's serving
signature, or `serve_global` of a DELG export); no model code is imported, so
a converted official checkpoint, a trained model and a TF Serving deployment
give the same descriptors.

Steps for one image (DELF's extraction order):
  1. `load_image` (RGB uint8), optional crop box (x1, y1, x2, y2), then
     `resize_image` with the config's max/min_image_size and
     use_square_images. This part is pure NumPy/Pillow and thread-safe
     (`load_and_preprocess`), so a pipeline can run it in worker threads.
  2. The SavedModel signature on the selected global scales
     (`image_scales[i]` for i in `global_config.image_scales_ind`, all scales
     when empty) returns one L2-normalised descriptor per scale.
  3. Scale pooling (`pool_scales`), per `global_config.scale_pooling`:
     AVERAGE: each scale L2-normalised, averaged, L2-normalised (official
       DOLG; equals the signature's own `global_descriptor`).
     GEM: each scale L2-normalised, then a signed generalised mean
       m = mean_s(sign(v_s) * |v_s|^p), g = sign(m) * |m|^(1/p),
       L2-normalised. The signed power keeps the mean defined for DOLG's
       signed descriptors (a clamp max(x, eps)^p as in spatial GeM would throw
       away every negative component); p = 1 is AVERAGE, and for large p each
       component tends to the scale value of largest magnitude.
  4. Optional PCA (`apply_pca`), DELF's ApplyPcaAndWhitening:
     y = P[:pca_dim] @ (x - mean), with whitening y /= sqrt(var[:pca_dim] + eps),
     then L2-normalised.
"""

import os

import numpy as np
import tensorflow as tf

from dolg_tf.extraction import image_loading
from dolg_tf.io import config_io, datum_io

DolgConfig = config_io.DolgConfig
ScalePooling = DolgConfig.GlobalConfig

# Added to the PCA variances before the square root when whitening.
WHITENING_EPSILON = 1e-12
# Floor of the norms in L2 normalisation.
NORM_EPSILON = 1e-12
# Signatures holding the global-only DELF interface, in order of preference.
GLOBAL_SIGNATURES = ("serve_global", "serving_default")


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """x / max(||x||_2, NORM_EPSILON) along `axis`, in float32."""
  x = np.asarray(x, dtype=np.float32)
  norm = np.linalg.norm(x, axis=axis, keepdims=True)
  return x / np.maximum(norm, NORM_EPSILON)


def pool_scales(per_scale: np.ndarray, method: int = ScalePooling.AVERAGE, p: float = 3.0):
  """Combines per-scale descriptors [S, D] into one L2-normalised descriptor [D].

  Args:
    per_scale: float [S, D] descriptors, one row per scale.
    method: `DolgConfig.GlobalConfig.AVERAGE` or `GEM` (see the module doc).
    p: GEM exponent (> 0).

  Returns:
    float32 [D].

  Raises:
    ValueError: unknown method, non-positive p or no scales.
  """
  per_scale = np.asarray(per_scale, dtype=np.float64)
  if per_scale.ndim != 2 or per_scale.shape[0] == 0:
    raise ValueError(f"expected per-scale descriptors [S>0, D], got shape {per_scale.shape}")
  normalized = per_scale / np.maximum(np.linalg.norm(per_scale, axis=1, keepdims=True), 1e-12)
  if method == ScalePooling.AVERAGE:
    pooled = normalized.mean(axis=0)
  elif method == ScalePooling.GEM:
    if not p > 0:
      raise ValueError(f"GEM scale pooling needs p > 0, got {p}")
    m = np.mean(np.sign(normalized) * np.abs(normalized) ** p, axis=0)
    pooled = np.sign(m) * np.abs(m) ** (1.0 / p)
  else:
    raise ValueError(f"unknown scale pooling {method}")
  return l2_normalize(pooled.astype(np.float32))


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
  return l2_normalize(projected.astype(np.float32))


def _load_array(path: str) -> np.ndarray:
  if path.endswith(".npy"):
    try:
      return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise OSError(f"{path}: cannot read .npy file ({e})") from e
  return datum_io.read_from_file(path)


class PcaProjection:
  """PCA (+ optional whitening) parameters read from .npy or DatumProto files."""

  def __init__(self, parameters: DolgConfig.PcaParameters, config_path: str | None = None):
    """Loads the files named in `parameters`.

    Raises:
      FileNotFoundError / IOError: a file is missing or unreadable (named).
      ValueError: inconsistent shapes (the file is named).
    """
    field = "global_config.pca_parameters"
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


class GlobalExtractor:
  """Extracts global descriptors with a SavedModel as a DolgConfig describes.

  `load_and_preprocess` is thread-safe and TF-free; `extract` runs the model.
  """

  def __init__(
    self,
    config: DolgConfig,
    config_path: str | None = None,
    model_path: str | None = None,
    signature: str | None = None,
    saved_model=None,
  ):
    """Loads the SavedModel and the PCA files.

    Args:
      config: a validated DolgConfig (use_global_features must be true).
      config_path: the file `config` came from: names it in errors.
      model_path: overrides `config.model_path` (already resolved).
      signature: signature name; default `serve_global` if present (DELG
        exports), else `serving_default`.
      saved_model: an already loaded SavedModel (`tf.saved_model.load`) to use
        instead of loading `model_path` again.

    Raises:
      ValueError: the config asks for no global features, or the SavedModel
        lacks a usable signature.
      FileNotFoundError: the model or a PCA file is missing (named).
    """
    source = config_path or "<config>"
    if not config.use_global_features:
      raise ValueError(f"{source}: use_global_features is false, nothing to extract")
    self.config = config
    if saved_model is not None:
      self.model_path = model_path or config_io.resolve_model_path(
        config, config_path, must_exist=False
      )
      self._loaded = saved_model
    else:
      self.model_path = model_path or config_io.resolve_model_path(config, config_path)
      if not os.path.exists(os.path.join(self.model_path, "saved_model.pb")):
        raise FileNotFoundError(f"{self.model_path}: no saved_model.pb (model_path in {source})")
      self._loaded = tf.saved_model.load(self.model_path)
    names = [signature] if signature else list(GLOBAL_SIGNATURES)
    names = [n for n in names if n in self._loaded.signatures]
    if not names:
      raise ValueError(
        f"{self.model_path}: SavedModel has no signature {signature or GLOBAL_SIGNATURES}; "
        f"it has {sorted(self._loaded.signatures)}"
      )
    self.signature_name = names[0]
    self._signature = self._loaded.signatures[self.signature_name]
    inputs = set(self._signature.structured_input_signature[1])
    expected = {"input_image", "input_scales", "input_global_scales_ind"}
    if inputs != expected:
      raise ValueError(
        f"{self.model_path}: signature {self.signature_name} takes {sorted(inputs)}, "
        f"expected {sorted(expected)}"
      )

    scales = list(config.image_scales)
    indices = list(config.global_config.image_scales_ind) or list(range(len(scales)))
    # Only the scales pooled into the global descriptor are computed.
    self.scales = np.array([scales[i] for i in indices], dtype=np.float32)
    self._scale_indices = tf.constant(np.arange(len(indices), dtype=np.int32))
    self._scales_tensor = tf.constant(self.scales)
    self.scale_pooling = config.global_config.scale_pooling
    self.gem_p = float(config.global_config.gem_p)
    self.pca = (
      PcaProjection(config.global_config.pca_parameters, config_path)
      if config.global_config.use_pca
      else None
    )
    self.max_image_size = int(config.max_image_size)
    self.min_image_size = int(config.min_image_size)
    self.square = bool(config.use_square_images)
    self.suffix = config.global_descriptor_suffix

  @classmethod
  def from_config_file(cls, config_path: str, **kwargs) -> "GlobalExtractor":
    """Loads the config file (validated) and the model it names."""
    return cls(config_io.load_dolg_config(config_path), config_path=config_path, **kwargs)

  @property
  def output_dim(self) -> int | None:
    """Descriptor dimension after PCA, or None before the first extraction without PCA."""
    if self.pca is not None:
      return self.pca.pca_dim
    return getattr(self, "_dim", None)

  def preprocess(self, image: np.ndarray, box=None) -> np.ndarray:
    """Crops (x1, y1, x2, y2) if `box` is given, then resizes as configured."""
    if box is not None:
      image = image_loading.crop_box(image, box)
    resized, _ = image_loading.resize_image(
      image, self.max_image_size, self.min_image_size, self.square
    )
    return np.ascontiguousarray(resized)

  def load_and_preprocess(self, path: str, box=None) -> np.ndarray:
    """`load_image` + `preprocess`. Thread-safe; no TensorFlow.

    Raises:
      image_loading.ImageLoadError: the file cannot be read (named), or the
        crop box is empty.
    """
    return image_loading.load_and_preprocess(path, box, self.preprocess)

  def per_scale_descriptors(self, image: np.ndarray) -> np.ndarray:
    """The signature's L2-normalised descriptors [S, D] of a preprocessed uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    outputs = self._signature(
      input_image=tf.constant(image),
      input_scales=self._scales_tensor,
      input_global_scales_ind=self._scale_indices,
    )
    descriptors = outputs["global_descriptors"].numpy()
    self._dim = descriptors.shape[-1]
    return descriptors

  def extract(self, image: np.ndarray) -> np.ndarray:
    """Global descriptor float32 [D'] of a preprocessed uint8 [H, W, 3] image."""
    pooled = pool_scales(self.per_scale_descriptors(image), self.scale_pooling, self.gem_p)
    if self.pca is not None:
      pooled = self.pca(pooled)
    return pooled

  def extract_from_file(self, path: str, box=None) -> np.ndarray:
    """Loads, crops, resizes and describes one image file."""
    return self.extract(self.load_and_preprocess(path, box))
