"""What one kind of extraction makes of the SavedModel's outputs, and the files it writes.

Extractor (extractor.py) holds one of these, chosen once from the config:

  GlobalOutputs (use_local_features false): the global-only signature on the
    global scales; `finish` pools the per-scale descriptors into the float32
    [D'] global descriptor (postprocess.GlobalPostprocess), which
    pipeline.run_extraction writes itself (no writer).
  LocalGlobalOutputs (use_local_features true, a DELG export): DELF's
    local+global `serving_default` on the whole pyramid; `finish` gives a dict
    of local features (post-processed as local_extractor.py describes) and,
    with use_global_features, the global descriptor; its writer writes the
    two files of each image (local_extractor.LocalGlobalWriter).

Both refuse NaN / inf descriptors (postprocess.refuse_non_finite).
"""

import os

import numpy as np
import tensorflow as tf

from dolg_tf.extraction import local_extractor, postprocess, savedmodel_runner
from dolg_tf.io import config_io, image_loading
from dolg_tf.io import savedmodel_contract as contract

DolgConfig = config_io.DolgConfig


class GlobalOutputs:
  """Global-only extraction: one global descriptor per image."""

  spec = savedmodel_runner.GLOBAL_ONLY
  whole_pyramid = False  # only the scales pooled into the global descriptor run

  def __init__(self, config: DolgConfig, global_postprocess: postprocess.GlobalPostprocess):
    self.global_postprocess = global_postprocess
    self.global_suffix = config.global_descriptor_suffix

  @staticmethod
  def signature_inputs(config: DolgConfig) -> dict:
    """Signature inputs besides the image and the scales: none."""
    del config
    return {}

  @property
  def min_input_size(self) -> int:
    """DELF's tiny-image rule: an image under 10 px is a failure (no empty descriptor)."""
    return image_loading.MIN_IMAGE_SIZE

  def preprocessed(self, resized: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """What `Extractor.preprocess` returns: the resized image (the factors are not needed)."""
    del factors
    return resized

  def prepare(self, image, scale_factors, preprocess):
    """(uint8 image for the model, None, None): the model always runs."""
    del scale_factors, preprocess
    if isinstance(image, local_extractor.PreprocessedImage):
      image = image.image
    return image, None, None

  def finish(self, image, scale_factors, out: dict) -> np.ndarray:
    """The float32 [D'] global descriptor from the signature's outputs `out`."""
    del scale_factors
    descriptor = self.global_postprocess(out[contract.GLOBAL_DESCRIPTORS])
    postprocess.refuse_non_finite(descriptor, "global descriptor", image)
    return descriptor

  def output_paths(self, output_dir: str, image_id: str) -> list[str]:
    return [os.path.join(output_dir, image_id + self.global_suffix)]

  def write_outputs(self, output_dir: str, image_id: str, result) -> list[str]:
    del output_dir, image_id, result
    raise ValueError("write_outputs writes DELG results; global descriptors go to the pipeline")

  def make_writer(self, output_dir: str, extractor) -> None:
    """None: the pipeline writes global descriptors itself."""
    del output_dir, extractor


class LocalGlobalOutputs:
  """DELG extraction: local features and (with use_global_features) the global descriptor."""

  spec = savedmodel_runner.LOCAL_AND_GLOBAL
  whole_pyramid = True  # local features come from every scale

  def __init__(
    self,
    config: DolgConfig,
    global_postprocess: postprocess.GlobalPostprocess,
    config_path: str | None = None,
    invert_local_scales: bool = False,
  ):
    """Loads the local PCA files, if any.

    Args:
      config: the completed DolgConfig.
      global_postprocess: makes the global descriptor.
      config_path: the config file (relative PCA paths, errors).
      invert_local_scales: the export predates interface version 2: its SCALES
        output holds s, not 1 / s.
    """
    local_config = config.local_config
    self.global_postprocess = global_postprocess
    self.use_global = bool(config.use_global_features)
    self.use_resized_coordinates = bool(local_config.use_resized_coordinates)
    self.binarize = bool(local_config.binarize)
    self.local_pca = (
      postprocess.PcaProjection(
        local_config.pca_parameters, config_path, "local_config.pca_parameters"
      )
      if local_config.use_pca
      else None
    )
    self.invert_local_scales = invert_local_scales
    self.global_suffix = config.global_descriptor_suffix
    self.local_suffix = config.local_descriptor_suffix

  @staticmethod
  def signature_inputs(config: DolgConfig) -> dict:
    """DELF's local inputs: the feature count and the attention threshold."""
    local_config = config.local_config
    return {
      contract.INPUT_MAX_FEATURE_NUM: tf.constant(int(local_config.max_feature_num), tf.int32),
      contract.INPUT_ABS_THRES: tf.constant(float(local_config.score_threshold), tf.float32),
    }

  @property
  def min_input_size(self) -> int:
    """0 for local-only extraction (DELF gives an empty feature set under 10 px).

    With a global descriptor such an image is a failure with its reason,
    since an empty global descriptor would be a silent wrong result (DELF's
    own DELG script stops there: its datum_io refuses the empty float64 array).
    """
    return image_loading.MIN_IMAGE_SIZE if self.use_global else 0

  def preprocessed(self, resized: np.ndarray, factors) -> local_extractor.PreprocessedImage:
    """What `Extractor.preprocess` returns: the image with its resize factors [sy, sx]."""
    return local_extractor.PreprocessedImage(resized, np.asarray(factors, np.float32))

  def prepare(self, image, scale_factors, preprocess):
    """(uint8 image for the model, scale factors, result without the model or None)."""
    if isinstance(image, local_extractor.PreprocessedImage):
      image, scale_factors = image
    elif scale_factors is None:
      image, scale_factors = preprocess(np.asarray(image))
    if min(np.shape(image)[:2]) >= image_loading.MIN_IMAGE_SIZE:
      return image, scale_factors, None
    if self.use_global:
      image_loading.check_min_size(image, "image")
    width = self.local_pca.pca_dim if self.local_pca is not None else 0
    empty = {  # DELF's tiny-image rule: no local features.
      "locations": np.zeros([0, 2], np.float32),
      "descriptors": np.zeros([0, width], np.float32),
      "scales": np.zeros([0], np.float32),
      "scores": np.zeros([0], np.float32),
    }
    return image, scale_factors, empty

  def finish(self, image, scale_factors, out: dict) -> dict:
    """The local features (and global descriptor) from the signature's outputs `out`."""
    locations = local_extractor.keypoint_centers(out[contract.BOXES])
    if not self.use_resized_coordinates:
      locations = locations / np.asarray(scale_factors, np.float32)[None, :]
    result = {
      "locations": locations.astype(np.float32),
      "descriptors": self.postprocess_descriptors(out[contract.FEATURES]),
      "scales": self.local_scales(out[contract.SCALES]),
      "scores": out[contract.SCORES].astype(np.float32),
    }
    if self.use_global:
      result["global"] = self.global_postprocess(out[contract.GLOBAL_DESCRIPTORS])
    for key, what in (("global", "global descriptor"), ("descriptors", "local descriptors")):
      if key in result:
        postprocess.refuse_non_finite(result[key], what, image)
    return result

  def local_scales(self, scales: np.ndarray) -> np.ndarray:
    """DELF's .delg_local scales, 1 / pyramid scale, from the signature's output."""
    scales = np.asarray(scales, np.float32)
    return (1.0 / scales).astype(np.float32) if self.invert_local_scales else scales

  def postprocess_descriptors(self, features: np.ndarray) -> np.ndarray:
    """DELG local descriptors as configured (local_extractor.postprocess_descriptors)."""
    pca_dim = self.local_pca.pca_dim if self.local_pca is not None else None
    return local_extractor.postprocess_descriptors(features, self.local_pca, pca_dim, self.binarize)

  def output_paths(self, output_dir: str, image_id: str) -> list[str]:
    """The global file (if any) first, then the local file."""
    paths = [os.path.join(output_dir, image_id + self.global_suffix)] if self.use_global else []
    paths.append(os.path.join(output_dir, image_id + self.local_suffix))
    return paths

  def write_outputs(self, output_dir: str, image_id: str, result: dict) -> list[str]:
    """Writes a DELG `extract` result (local_extractor.write_outputs); returns the paths."""
    return local_extractor.write_outputs(
      output_dir, image_id, result, self.global_suffix, self.local_suffix
    )

  def make_writer(self, output_dir: str, extractor) -> local_extractor.LocalGlobalWriter:
    """The pipeline.run_extraction writer of `extractor`'s DELG results."""
    return local_extractor.LocalGlobalWriter(output_dir, extractor)
