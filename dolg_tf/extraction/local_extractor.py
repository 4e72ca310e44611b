"""DELG local + global features of images from an exported DELG SavedModel.

    config = config_io.load_dolg_config("protos/delg.pbtxt")
    extractor = LocalGlobalExtractor(config, config_path="protos/delg.pbtxt")
    result = extractor.extract(image)                 # uint8 RGB [H, W, 3]
    extractor.write_outputs("out/", "image_id", result)

Steps for one image (DELF's extractor for DELG):
  1. Optional crop box (x1, y1, x2, y2), then `resize_image` with the config's
     max/min_image_size and use_square_images; the resize factors [sy, sx]
     are kept (`preprocess` / `load_and_preprocess`, thread-safe, no TF).
  2. The SavedModel's `serving_default` (export/export_model.py's
     DelgServingModule) on all `image_scales`, with
     `local_config.max_feature_num`, `local_config.score_threshold` and the
     global scale indices (`global_config.image_scales_ind`, all when empty).
  3. Local features: keypoints are the centres of the receptive boxes,
     ((y1 + y2) / 2, (x1 + x2) / 2) (DELF's CalculateKeypointCenters), in the
     resized image's pixels; unless `use_resized_coordinates`, they are divided
     by the resize factors to give original-image (after crop) coordinates.
     Descriptors are L2-normalised; with `local_config.use_pca` they are
     projected (+ whitened) and L2-normalised again (DELF's
     PostProcessDescriptors). With `local_config.binarize` they are then
     replaced by packed sign bits (binarize.py, DELG*).
  4. Global descriptor: the per-scale descriptors pooled as GlobalExtractor
     does (`pool_scales`, global_config.scale_pooling), optional PCA.

Outputs (`write_outputs`, each written atomically): `<id><global suffix>` a
DatumProto float32 [D] and `<id><local suffix>` a DelfFeatures file (DELF
layout: locations (y, x), scales, descriptors, attention = scores;
binarised descriptors as described in binarize.py).
"""

import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from dolg_tf.extraction import binarize, extractor, image_loading
from dolg_tf.io import config_io, datum_io, feature_io

DolgConfig = config_io.DolgConfig
_INPUTS = {
  "input_image",
  "input_scales",
  "input_max_feature_num",
  "input_abs_thres",
  "input_global_scales_ind",
}


class PreprocessedImage(NamedTuple):
  """A resized image and its resize factors [sy, sx] (new / original size)."""

  image: np.ndarray
  scale_factors: np.ndarray


def keypoint_centers(boxes: np.ndarray) -> np.ndarray:
  """Centres (y, x) [N, 2] of (y1, x1, y2, x2) boxes [N, 4]."""
  boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
  return 0.5 * (boxes[:, :2] + boxes[:, 2:])


class LocalGlobalExtractor:
  """DELG local + global extraction with a SavedModel, as a DolgConfig describes.

  `load_and_preprocess` is thread-safe and TF-free; `extract` runs the model.
  It follows the pipeline.run_extraction extractor protocol, except that
  `extract` returns a dict (write it with `write_outputs`).
  """

  def __init__(
    self,
    config: DolgConfig,
    config_path: str | None = None,
    model_path: str | None = None,
    saved_model=None,
  ):
    """Loads the SavedModel and the PCA files.

    Args:
      config: a validated DolgConfig with use_local_features true.
      config_path: the file `config` came from (errors name it; relative
        paths resolve against it).
      model_path: overrides `config.model_path` (already resolved).
      saved_model: an already loaded SavedModel to use instead.

    Raises:
      ValueError: use_local_features is false, or the SavedModel has no DELG
        local+global `serving_default` signature.
      FileNotFoundError: the model or a PCA file is missing (named).
    """
    source = config_path or "<config>"
    if not config.use_local_features:
      raise ValueError(f"{source}: use_local_features is false; use GlobalExtractor")
    self.config = config
    if saved_model is not None:
      self.model_path = model_path or config.model_path
      self._loaded = saved_model
    else:
      self.model_path = model_path or config_io.resolve_model_path(config, config_path)
      if not os.path.exists(os.path.join(self.model_path, "saved_model.pb")):
        raise FileNotFoundError(f"{self.model_path}: no saved_model.pb (model_path in {source})")
      self._loaded = tf.saved_model.load(self.model_path)
    if "serving_default" not in self._loaded.signatures:
      raise ValueError(f"{self.model_path}: SavedModel has no serving_default signature")
    self._signature = self._loaded.signatures["serving_default"]
    inputs = set(self._signature.structured_input_signature[1])
    if inputs != _INPUTS:
      raise ValueError(
        f"{self.model_path}: serving_default takes {sorted(inputs)}, not DELG's local+global "
        f"inputs {sorted(_INPUTS)} (is it a DELG export?)"
      )
    scales = list(config.image_scales)
    if not scales:
      raise ValueError(f"{source}: image_scales is empty")
    self.scales = np.array(scales, dtype=np.float32)
    indices = list(config.global_config.image_scales_ind) or list(range(len(scales)))
    self.global_scale_indices = np.array(indices, dtype=np.int32)
    local = config.local_config
    self.max_feature_num = int(local.max_feature_num)
    self.score_threshold = float(local.score_threshold)
    self.use_resized_coordinates = bool(local.use_resized_coordinates)
    self.binarize = bool(local.binarize)
    self.local_pca = (
      extractor.PcaProjection(local.pca_parameters, config_path) if local.use_pca else None
    )
    self.use_global = bool(config.use_global_features)
    self.scale_pooling = config.global_config.scale_pooling
    self.gem_p = float(config.global_config.gem_p)
    self.global_pca = (
      extractor.PcaProjection(config.global_config.pca_parameters, config_path)
      if config.global_config.use_pca
      else None
    )
    self.max_image_size = int(config.max_image_size)
    self.min_image_size = int(config.min_image_size)
    self.square = bool(config.use_square_images)
    self.global_suffix = config.global_descriptor_suffix
    self.local_suffix = config.local_descriptor_suffix

  @classmethod
  def from_config_file(cls, config_path: str, **kwargs) -> "LocalGlobalExtractor":
    """Loads the config file (validated) and the model it names."""
    return cls(config_io.load_dolg_config(config_path), config_path=config_path, **kwargs)

  # --------------------------------------------------------------------------- images

  def preprocess(self, image: np.ndarray, box=None) -> PreprocessedImage:
    """Crops (x1, y1, x2, y2) if `box` is given, then resizes as configured."""
    if box is not None:
      image = image_loading.crop_box(image, box)
    resized, factors = image_loading.resize_image(
      image, self.max_image_size, self.min_image_size, self.square
    )
    return PreprocessedImage(np.ascontiguousarray(resized), np.asarray(factors, np.float32))

  def load_and_preprocess(self, path: str, box=None) -> PreprocessedImage:
    """`load_image` + `preprocess`. Thread-safe; no TensorFlow.

    Raises:
      image_loading.ImageLoadError: the file cannot be read (named), or the
        crop box is empty.
    """
    return image_loading.load_and_preprocess(path, box, self.preprocess)

  # --------------------------------------------------------------------------- model

  def run_model(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """Raw signature outputs (boxes, features, scales, scores, global_descriptors)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    outputs = self._signature(
      input_image=tf.constant(image),
      input_scales=tf.constant(self.scales),
      input_max_feature_num=tf.constant(self.max_feature_num, tf.int32),
      input_abs_thres=tf.constant(self.score_threshold, tf.float32),
      input_global_scales_ind=tf.constant(self.global_scale_indices),
    )
    return {k: v.numpy() for k, v in outputs.items()}

  def postprocess_descriptors(self, features: np.ndarray) -> np.ndarray:
    """L2, optional PCA + L2, optional binarisation (packed uint8)."""
    features = np.asarray(features, dtype=np.float32)
    descriptors = extractor.l2_normalize(features) if len(features) else features
    if self.local_pca is not None:
      dim = self.local_pca.pca_dim
      descriptors = (
        self.local_pca(descriptors) if len(descriptors) else np.zeros([0, dim], np.float32)
      )
    if self.binarize:
      descriptors = binarize.binarize(descriptors)
    return descriptors

  def extract(self, image, scale_factors=None) -> dict[str, np.ndarray]:
    """Local and global features of one image.

    Args:
      image: a PreprocessedImage (from `load_and_preprocess`), or a uint8
        [H, W, 3] image; a raw image is preprocessed (resized) first unless
        `scale_factors` says it already was.
      scale_factors: [sy, sx] resize factors of an already resized `image`.

    Returns:
      dict with 'global' float32 [D] (absent when use_global_features is
      false), 'locations' float32 [N, 2] (y, x), 'descriptors' float32 [N, d]
      (packed uint8 [N, ceil(d/8)] when binarised), 'scales' float32 [N],
      'scores' float32 [N] (attention), strongest first, N <= max_feature_num.
    """
    if isinstance(image, PreprocessedImage):
      image, scale_factors = image
    elif scale_factors is None:
      image, scale_factors = self.preprocess(np.asarray(image))
    out = self.run_model(image)
    locations = keypoint_centers(out["boxes"])
    if not self.use_resized_coordinates:
      locations = locations / np.asarray(scale_factors, np.float32)[None, :]
    result = {
      "locations": locations.astype(np.float32),
      "descriptors": self.postprocess_descriptors(out["features"]),
      "scales": out["scales"].astype(np.float32),
      "scores": out["scores"].astype(np.float32),
    }
    if self.use_global:
      pooled = extractor.pool_scales(out["global_descriptors"], self.scale_pooling, self.gem_p)
      result["global"] = self.global_pca(pooled) if self.global_pca is not None else pooled
    return result

  def extract_from_file(self, path: str, box=None) -> dict[str, np.ndarray]:
    """Loads, crops, resizes and describes one image file."""
    return self.extract(self.load_and_preprocess(path, box))

  # --------------------------------------------------------------------------- files

  def output_paths(self, output_dir: str, image_id: str) -> list[str]:
    """The files `write_outputs` writes for `image_id` (global first if any)."""
    paths = [os.path.join(output_dir, image_id + self.local_suffix)]
    if self.use_global:
      paths.insert(0, os.path.join(output_dir, image_id + self.global_suffix))
    return paths

  def write_outputs(self, output_dir: str, image_id: str, result: dict) -> list[str]:
    """Writes `extract`'s result; see `write_outputs` (module function)."""
    return write_outputs(output_dir, image_id, result, self.global_suffix, self.local_suffix)

  def make_writer(self, output_dir: str) -> "LocalGlobalWriter":
    """The writer `pipeline.run_extraction` uses for this extractor's results."""
    return LocalGlobalWriter(output_dir, self)


class LocalGlobalWriter:
  """`pipeline.run_extraction` writer of DELG results (per-image files only).

  An image counts as done when every file of `LocalGlobalExtractor.output_paths`
  exists, so a run killed between an image's global and local file redoes it.
  """

  def __init__(self, output_dir: str, extractor_: LocalGlobalExtractor):
    self.output_dir = output_dir
    self._extractor = extractor_

  def existing_ids(self) -> set[str]:
    """Ids whose `output_paths` files all exist."""
    names = {e.name for e in os.scandir(self.output_dir) if not e.name.startswith(".")}
    local = self._extractor.local_suffix
    candidates = {n[: -len(local)] for n in names if n.endswith(local)}
    return {i for i in candidates if all(p in names for p in self._extractor.output_paths("", i))}

  def write(self, image_id: str, result: dict) -> list[str]:
    """Writes one image's files atomically; returns the ids written."""
    self._extractor.write_outputs(self.output_dir, image_id, result)
    return [image_id]

  def flush(self) -> list[str]:
    """Nothing is buffered: returns no ids."""
    return []


def write_outputs(
  output_dir: str,
  image_id: str,
  result: dict,
  global_suffix: str = ".delg_global",
  local_suffix: str = ".delg_local",
) -> list[str]:
  """Writes `<id><global_suffix>` (if result has 'global') and `<id><local_suffix>`.

  Each file is written atomically (temp file + rename). The local file is a
  DelfFeatures file: locations (y, x), scales, descriptors (float32, or packed
  bytes stored as uint32 when binarised), attention = scores.

  Returns:
    The paths written.

  Raises:
    ValueError: inconsistent arrays. IOError: naming a file that cannot be
      written.
  """
  os.makedirs(output_dir, exist_ok=True)
  written = []
  if result.get("global") is not None:
    path = os.path.join(output_dir, image_id + global_suffix)
    datum_io.write_to_file(path, np.asarray(result["global"], np.float32))
    written.append(path)
  descriptors = np.asarray(result["descriptors"])
  if binarize.is_binary(descriptors):
    descriptors = binarize.to_stored(descriptors)
  path = os.path.join(output_dir, image_id + local_suffix)
  feature_io.write_to_file(
    path, result["locations"], result["scales"], descriptors, result["scores"]
  )
  written.append(path)
  return written


def read_local_features(path: str) -> feature_io.LocalFeatures:
  """Reads a `.delg_local` file; binarised descriptors come back as packed uint8."""
  features = feature_io.read_from_file(path)
  if binarize.is_binary(features.descriptors):
    try:
      packed = binarize.as_packed(features.descriptors)
    except ValueError as e:
      raise OSError(f"{path}: {e}") from e
    features = features._replace(descriptors=packed)
  return features
