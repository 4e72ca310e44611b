"""Global (DOLG) or local + global (DELG) features of images from an exported SavedModel.

    config = config_io.load_dolg_config("protos/dolg.pbtxt")
    extractor = Extractor(config, config_path="protos/dolg.pbtxt")
    descriptor = extractor.extract_from_file("image.jpg")          # float32 [D]

One class for both kinds of config, assembled from:
  - the SavedModel and its contract (savedmodel_runner.py: load, signature
    checks, single and batched runs; io/savedmodel_contract.py: names and the
    export section); no model code is imported, so a converted official
    checkpoint, a trained model and a TF Serving deployment give the same
    descriptors;
  - the image pyramid (io/image_pyramid.py: the scales run, the global ones,
    the per-image size check);
  - what the outputs become (extraction_outputs.py): GlobalOutputs
    (use_local_features false) or LocalGlobalOutputs (a DELG export), with
    the global descriptor made by postprocess.GlobalPostprocess (scale
    pooling, PCA).

For one image, DELF's order: `load_image` (RGB uint8), optional crop box
(x1, y1, x2, y2), `resize_image` with the config's max/min_image_size and
use_square_images (pure NumPy/Pillow and thread-safe: `load_and_preprocess`,
so a pipeline can run it in worker threads); then the signature on the
pyramid; then the outputs' post-processing. `extract` returns the float32 [D]
descriptor (global-only) or a dict (DELG; `make_writer` gives
pipeline.run_extraction the writer of its two files).

Defaults from the SavedModel. When the config leaves `image_scales` empty, or
does not set `max_image_size` / `min_image_size` (or global_config's
scale_pooling), the values come from the export's config asset
(export_section.read_export_config: its "export" section, or the
export_config.json of older exports); the config is then validated again with
them (`resolve_config`), e.g. `global_config.image_scales_ind` against the
pyramid.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from dolg_tf.extraction import extraction_outputs, postprocess, savedmodel_runner
from dolg_tf.extraction.postprocess import NonFiniteDescriptorError  # noqa: F401 (its error)
from dolg_tf.io import config_io, export_section, image_loading, image_pyramid
from dolg_tf.io import savedmodel_contract as contract

DolgConfig = config_io.DolgConfig
ScalePooling = DolgConfig.GlobalConfig
# export.scale_pooling (savedmodel_contract.EXPORT_SCALE_POOLINGS) -> the
# GlobalConfig.scale_pooling it defaults to.
SCALE_POOLING_OF_EXPORT = {"average": ScalePooling.AVERAGE, "max": ScalePooling.MAX}


def resolve_config(
  config: DolgConfig, record, config_path: str | None = None, model_path: str | None = None
) -> DolgConfig:
  """`config` with the fields it leaves unset taken from the SavedModel, validated again.

  image_scales (when empty), max_image_size and min_image_size (when not set,
  proto2 presence) and global_config.scale_pooling come from the export's
  record; which ones did is logged.

  Args:
    config: a validated DolgConfig (image_scales may be empty).
    record: the export's export_section.ExportRecord, or None.
    config_path: the file `config` came from (named in errors).
    model_path: the SavedModel folder (named in errors).

  Returns:
    A new DolgConfig; `config` is not changed.

  Raises:
    ValueError: neither gives an image pyramid, or the completed config does
      not validate (e.g. image_scales_ind out of range of the SavedModel's
      pyramid); one line naming the file and field.
  """
  source = config_path or "<config>"
  resolved = DolgConfig()
  resolved.CopyFrom(config)
  defaults = record.recorded_values() if record is not None else {}
  taken = []
  if not resolved.image_scales and "image_scales" in defaults:
    resolved.image_scales.extend(float(s) for s in defaults["image_scales"])
    taken.append(f"image_scales={list(resolved.image_scales)}")
  for name in ("max_image_size", "min_image_size"):
    if not resolved.HasField(name) and name in defaults:
      setattr(resolved, name, defaults[name])
      taken.append(f"{name}={defaults[name]}")
  pooling = SCALE_POOLING_OF_EXPORT[defaults.get("scale_pooling", "average")]
  if not resolved.global_config.HasField("scale_pooling") and pooling != ScalePooling.AVERAGE:
    resolved.global_config.scale_pooling = pooling
    taken.append(f"global_config.scale_pooling={ScalePooling.ScalePooling.Name(pooling)}")
  if not resolved.image_scales:
    where = f"{record.path} has none" if record is not None else f"no {contract.CONFIG_ASSET}"
    raise ValueError(
      f"{source}: image_scales: empty, and the SavedModel gives no pyramid "
      f"({model_path or '<loaded SavedModel>'}: {where})"
    )
  if taken:
    logging.info("%s: %s from the SavedModel's %s", source, ", ".join(taken), record.path)
  config_io.validate_dolg_config(resolved, f"{source} (with {record.path})" if taken else source)
  return resolved


class Extractor:
  """Global (DOLG) or local + global (DELG) extraction with a SavedModel, per a DolgConfig.

  The pipeline.run_extraction extractor protocol (run_interface.ExtractorProtocol):
  `load_and_preprocess` is thread-safe and TF-free; `extract` runs the model;
  `extract_batch` runs it once for images of one size (the export's batched
  signature); `make_writer` gives the DELG writer (None for global-only
  extraction, which the pipeline writes).

  Attributes:
    config: the DolgConfig in use, completed from the SavedModel (resolve_config).
    local: whether local features are extracted (config.use_local_features).
    use_global: whether a global descriptor is made.
    model_path: the SavedModel folder (None for a loaded SavedModel without a path).
    runner: the savedmodel_runner.SavedModelRunner (signature_name,
      batch_signature_name: None for exports without the batched signature).
    pyramid: the io.image_pyramid.ImagePyramid (image_scales, global_scales,
      scales: the scales given to the signature).
    outputs: extraction_outputs.GlobalOutputs or LocalGlobalOutputs.
    suffix / global_suffix / local_suffix: output file suffixes.
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
      config: a validated DolgConfig (config_io.load_dolg_config).
      config_path: the file `config` came from: names it in errors; relative
        paths resolve as config_io.resolve_path does.
      model_path: overrides `config.model_path` (already resolved).
      saved_model: an already loaded SavedModel (`tf.saved_model.load`) to use
        instead of loading the model again; its defaults are still read from
        `model_path` / `config.model_path` when that folder exists.

    Raises:
      ValueError: nothing to extract, no image pyramid, a field out of range of
        the SavedModel's pyramid, or the SavedModel lacks the signature the
        config needs (named).
      FileNotFoundError: the model or a PCA file is missing (named).
    """
    source = config_path or "<config>"
    self.local = bool(config.use_local_features)
    if not self.local and not config.use_global_features:
      raise ValueError(f"{source}: use_global_features is false, nothing to extract")
    loaded, self.model_path = savedmodel_runner.load(config, config_path, model_path, saved_model)
    record = export_section.read_export_config(self.model_path)
    self.config = config = resolve_config(config, record, config_path, self.model_path)
    self.use_global = bool(config.use_global_features)
    if self.use_global:
      savedmodel_runner.set_test_time_options(loaded, config, record, self.model_path, source)
    kind = extraction_outputs.LocalGlobalOutputs if self.local else extraction_outputs.GlobalOutputs
    self.pyramid = image_pyramid.ImagePyramid.from_config(config, whole=kind.whole_pyramid)
    inputs = {
      contract.INPUT_SCALES: tf.constant(self.pyramid.scales),
      contract.INPUT_GLOBAL_SCALES_IND: tf.constant(self.pyramid.signature_global_indices),
      **kind.signature_inputs(config),
    }
    self.runner = savedmodel_runner.SavedModelRunner(loaded, self.model_path, kind.spec, inputs)
    global_config = config.global_config
    global_pca = (
      postprocess.PcaProjection(global_config.pca_parameters, config_path)
      if self.use_global and global_config.use_pca
      else None
    )
    global_postprocess = postprocess.GlobalPostprocess(global_config, global_pca)
    if self.local:
      # Exports of this project before interface version 2 hold s, not 1 / s, in SCALES.
      old = record is not None and record.interface_version == 1
      self.outputs = kind(config, global_postprocess, config_path, invert_local_scales=old)
    else:
      self.outputs = kind(config, global_postprocess)
    self.max_image_size = int(config.max_image_size)
    self.min_image_size = int(config.min_image_size)
    self.square = bool(config.use_square_images)
    self.truncate_boxes = config.query_box_rounding == DolgConfig.TRUNCATE
    self.suffix = self.global_suffix = config.global_descriptor_suffix
    self.local_suffix = config.local_descriptor_suffix

  @classmethod
  def from_config_file(cls, config_path: str, **kwargs) -> "Extractor":
    """Loads the config file (a DolgConfig, or DELF's DelfConfig translated) and its model."""
    return cls(config_io.load_any_config(config_path), config_path=config_path, **kwargs)

  @property
  def image_scales(self) -> np.ndarray:
    """The whole pyramid, float32 [S]."""
    return self.pyramid.image_scales

  @property
  def global_scales(self) -> np.ndarray:
    """The scales the global descriptor pools (each must see at least MIN_IMAGE_SIZE px)."""
    return self.pyramid.global_scales

  @property
  def scales(self) -> np.ndarray:
    """The scales given to the signature: the global ones, the whole pyramid for DELG."""
    return self.pyramid.scales

  @property
  def signature_name(self) -> str:
    return self.runner.signature_name

  @property
  def batch_signature_name(self) -> str | None:
    return self.runner.batch_signature_name

  @property
  def pca(self) -> "postprocess.PcaProjection | None":
    """The global descriptor's PCA, or None."""
    return self.outputs.global_postprocess.pca

  @property
  def output_dim(self) -> int | None:
    """Global descriptor dimension after PCA, or None before the first extraction without PCA."""
    return self.outputs.global_postprocess.output_dim

  # --------------------------------------------------------------------------- images

  def preprocess(self, image: np.ndarray, box=None):
    """Crops (x1, y1, x2, y2) if `box` is given, then resizes as configured.

    As DELF, a cropped image's max/min_image_size are scaled by
    max(crop side) / max(image side) (utils.ResizeImage's resize_factor).

    Returns:
      The resized uint8 image for global-only extraction; for DELG a
      local_extractor.PreprocessedImage (image and resize factors [sy, sx]).

    Raises:
      ValueError: the crop box is empty, or the image would be too small or too
        large at some scale (ImagePyramid.check_image).
    """
    resize_factor = 1.0
    if box is not None:
      original_size = max(image.shape[:2])
      image = image_loading.crop_box(image, box, truncate=self.truncate_boxes)
      # DELF scales the size limits with the crop (its extract_features.py).
      resize_factor = max(image.shape[:2]) / original_size
    resized, factors = image_loading.resize_image(
      image, self.max_image_size, self.min_image_size, self.square, resize_factor
    )
    resized = np.ascontiguousarray(resized)
    self.pyramid.check_image(resized)
    return self.outputs.preprocessed(resized, factors)

  def load_and_preprocess(self, path: str, box=None):
    """`load_image` + `preprocess`. Thread-safe; no TensorFlow.

    Raises:
      images.ImageError: the file cannot be read (named), or the
        crop box is empty.
    """
    return image_loading.load_and_preprocess(
      path, box, self.preprocess, min_size=self.min_input_size
    )

  @property
  def min_input_size(self) -> int:
    """Smallest side (after crop and resize) load_and_preprocess accepts.

    DELF's tiny-image rule: under 10 px it extracts nothing. Local-only
    extraction follows it exactly (`extract` gives an empty feature set,
    written as DELF writes it); with a global descriptor such an image is a
    failure with its reason (see the outputs' min_input_size).
    """
    return self.outputs.min_input_size

  # --------------------------------------------------------------------------- model

  def run_model(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """The signature's raw outputs for a preprocessed uint8 [H, W, 3] image (runner.run)."""
    return self.runner.run(image)

  def run_model_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """`run_model` of each image, equal-size images in one forward (runner.run_batch)."""
    return self.runner.run_batch(images)

  def per_scale_descriptors(self, image: np.ndarray) -> np.ndarray:
    """The signature's L2-normalised global descriptors [S, D] of a preprocessed uint8 image."""
    descriptors = self.run_model(image)[contract.GLOBAL_DESCRIPTORS]
    self.outputs.global_postprocess.input_dim = descriptors.shape[-1]
    return descriptors

  def extract(self, image, scale_factors=None):
    """Describes one image.

    Args:
      image: global-only: a preprocessed uint8 [H, W, 3] image. DELG: a
        PreprocessedImage (from `load_and_preprocess`), or a uint8 [H, W, 3]
        image, preprocessed (resized) first unless `scale_factors` says it
        already was.
      scale_factors: DELG: [sy, sx] resize factors of an already resized `image`.

    Returns:
      Global-only: the float32 [D'] global descriptor. DELG: a dict with
      'global' float32 [D'] (absent when use_global_features is false),
      'locations' float32 [N, 2] (y, x), 'descriptors' float32 [N, d] (packed
      uint8 [N, ceil(d/8)] when binarised), 'scales' float32 [N], 'scores'
      float32 [N] (attention), strongest first, N <= max_feature_num.

    Raises:
      NonFiniteDescriptorError (a ValueError): a global or local descriptor
        holds NaN or inf (the pipeline records the image as failed).
    """
    image, scale_factors, result = self.outputs.prepare(image, scale_factors, self.preprocess)
    if result is not None:
      return result
    return self.outputs.finish(image, scale_factors, self.run_model(image))

  def extract_batch(self, images: list) -> list:
    """`extract` of each image, the model run once per group of equal-size images.

    Args:
      images: what `extract` takes (without scale factors: DELG images are
        PreprocessedImages or are preprocessed here).

    Returns:
      One entry per image, in order: its `extract` result, or the exception
      `extract` would raise for it (e.g. NonFiniteDescriptorError), so that
      one bad image does not fail the others. If a batched forward itself
      fails, its images are run one by one, each failing alone.
    """
    prepared = [None] * len(images)
    results = [None] * len(images)
    groups = {}
    for i, image in enumerate(images):
      try:
        model_image, scale_factors, done = self.outputs.prepare(image, None, self.preprocess)
        if done is None:
          model_image = savedmodel_runner.check_image(model_image)
      except Exception as e:  # pylint: disable=broad-except
        results[i] = e
        continue
      prepared[i] = model_image, scale_factors
      if done is not None:
        results[i] = done
      else:
        groups.setdefault(model_image.shape, []).append(i)
    for members in groups.values():
      try:
        outputs = self.run_model_batch([prepared[i][0] for i in members])
      except Exception:  # pylint: disable=broad-except
        outputs = [None] * len(members)
      for i, out in zip(members, outputs):
        image, scale_factors = prepared[i]
        try:
          out = self.run_model(image) if out is None else out
          results[i] = self.outputs.finish(image, scale_factors, out)
        except Exception as e:  # pylint: disable=broad-except
          results[i] = e
    return results

  def extract_from_file(self, path: str, box=None):
    """Loads, crops, resizes and describes one image file (see `extract`).

    Raises:
      NonFiniteDescriptorError: naming `path`, for NaN or inf descriptors.
    """
    try:
      return self.extract(self.load_and_preprocess(path, box))
    except NonFiniteDescriptorError as e:
      raise NonFiniteDescriptorError(f"{path}: {e}") from e

  # --------------------------------------------------------------------------- files

  def output_paths(self, output_dir: str, image_id: str) -> list[str]:
    """The files written for `image_id`: the global file (if any) first, then DELG's local file."""
    return self.outputs.output_paths(output_dir, image_id)

  def write_outputs(self, output_dir: str, image_id: str, result: dict) -> list[str]:
    """Writes a DELG `extract` result (local_extractor.write_outputs); returns the paths."""
    return self.outputs.write_outputs(output_dir, image_id, result)

  def make_writer(self, output_dir: str):
    """The pipeline.run_extraction writer of DELG results; None for global-only extraction."""
    return self.outputs.make_writer(output_dir, self)
