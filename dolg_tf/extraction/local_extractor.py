"""DELG local features: keypoints, descriptor post-processing and the output files.

extractor.Extractor runs DELG (local + global) extraction when its DolgConfig
has use_local_features; this module holds the DELG-specific steps it uses:

    extractor = extractor_lib.Extractor(config, config_path="protos/delg.pbtxt")
    result = extractor.extract(image)                 # uint8 RGB [H, W, 3]
    extractor.write_outputs("out/", "image_id", result)   # -> write_outputs here

Steps for one image (DELF's extractor for DELG):
  1. Optional crop box (x1, y1, x2, y2), then `resize_image` with the config's
     max/min_image_size and use_square_images; the resize factors [sy, sx]
     are kept (a PreprocessedImage, thread-safe, no TF).
  2. The SavedModel's `serving_default` (export/export_model.py's
     DelgServingModule) on all `image_scales`, with
     `local_config.max_feature_num`, `local_config.score_threshold` and the
     global scale indices (`global_config.image_scales_ind`, all when empty).
  3. Local features: keypoints are the centres of the receptive boxes,
     ((y1 + y2) / 2, (x1 + x2) / 2) (DELF's CalculateKeypointCenters,
     `keypoint_centers`), in the resized image's pixels; unless
     `use_resized_coordinates`, they are divided by the resize factors to give
     original-image (after crop) coordinates. Descriptors are L2-normalised;
     with `local_config.use_pca` they are projected (+ whitened) and
     L2-normalised again (DELF's PostProcessDescriptors); with
     `local_config.binarize` they are then replaced by packed sign bits
     (binarize.py, DELG*) (`postprocess_descriptors`).
  4. Global descriptor: the per-scale descriptors pooled as for global-only
     extraction (`postprocess.pool_scales`, global_config.scale_pooling),
     optional PCA.

Outputs (`write_outputs`, each written atomically): `<id><global suffix>` a
DatumProto float32 [D] and `<id><local suffix>` a DelfFeatures file (DELF
layout: locations (y, x), scales, descriptors, attention = scores;
binarised descriptors as described in binarize.py).
"""

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from absl import logging

from dolg_tf.io import binarize, datum_io, descriptor_files, feature_io
from dolg_tf.utils import arrays


class PreprocessedImage(NamedTuple):
  """A resized image and its resize factors [sy, sx] (new / original size)."""

  image: np.ndarray
  scale_factors: np.ndarray


def keypoint_centers(boxes: np.ndarray) -> np.ndarray:
  """Centres (y, x) [N, 2] of (y1, x1, y2, x2) boxes [N, 4]."""
  boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
  return 0.5 * (boxes[:, :2] + boxes[:, 2:])


def postprocess_descriptors(
  features: np.ndarray,
  pca: Callable[[np.ndarray], np.ndarray] | None = None,
  pca_dim: int | None = None,
  binary: bool = False,
) -> np.ndarray:
  """DELF's PostProcessDescriptors: L2, optional PCA (+ L2), optional binarisation.

  Args:
    features: float [N, d] raw local descriptors.
    pca: e.g. a postprocess.PcaProjection (it L2-normalises its output), or None.
    pca_dim: the dimension `pca` gives (the width of an empty result).
    binary: replace the descriptors by packed sign bits (binarize.binarize).

  Returns:
    float32 [N, d or pca_dim], or packed uint8 [N, ceil(dim / 8)] when `binary`.
  """
  features = np.asarray(features, dtype=np.float32)
  descriptors = arrays.l2_normalize(features) if len(features) else features
  if pca is not None:
    descriptors = pca(descriptors) if len(descriptors) else np.zeros([0, pca_dim], np.float32)
  if binary:
    descriptors = binarize.binarize(descriptors)
  return descriptors


# The first byte of a non-empty DelfFeatures file: field 1 (`feature`), length-delimited.
_DELF_FEATURES_TAG = 0x0A


def local_file_problem(path: str) -> str | None:
  """Why the DelfFeatures file `path` is not a whole output, by its first byte; or None.

  A 0-byte file is whole: an image without any local feature serializes to
  no bytes (DELF's format), and outputs are fsynced before their rename, so a
  power cut cannot leave an empty file in their place. A file not starting
  with DelfFeatures' `feature` tag (e.g. zero-filled) is refused. A file
  truncated after its start is not detected here: reading it (retrieval's
  geometric verification) fails naming it.
  """
  try:
    with open(path, "rb") as f:
      head = f.read(1)
  except OSError as e:
    return f"unreadable ({descriptor_files.os_error_text(e)})"
  if not head:
    return None
  if head[0] != _DELF_FEATURES_TAG:
    return f"not a DelfFeatures file (first byte 0x{head[0]:02x})"
  return None


class LocalGlobalWriter:
  """`pipeline.run_extraction` writer of DELG results (per-image files only).

  An image counts as done when every file of the extractor's `output_paths`
  exists, so a run killed between an image's global and local file redoes it.
  The extractor (a DELG extractor.Extractor) gives `output_paths`,
  `write_outputs` and `local_suffix`.
  """

  def __init__(self, output_dir: str, extractor_):
    self.output_dir = output_dir
    self._extractor = extractor_

  def existing_ids(self) -> set[str]:
    """Ids whose `output_paths` files all exist and look whole.

    The global DatumProto file (a few KB) is parsed and its descriptor
    checked (descriptor_files.datum_file_problem); the local DelfFeatures file
    (often ~0.5 MB) is only checked to start as one (`local_file_problem`):
    parsing every one would read the whole collection on each resume. A
    rejected image is logged (INFO) and extracted again.
    """
    names = {e.name for e in os.scandir(self.output_dir) if not e.name.startswith(".")}
    local = self._extractor.local_suffix
    candidates = {n[: -len(local)] for n in names if n.endswith(local)}
    done = set()
    for image_id in sorted(candidates):
      paths = self._extractor.output_paths(self.output_dir, image_id)
      if not all(os.path.basename(p) in names for p in paths):
        continue
      problems = [
        (p, local_file_problem(p) if p.endswith(local) else descriptor_files.datum_file_problem(p))
        for p in paths
      ]
      bad = [(p, problem) for p, problem in problems if problem is not None]
      if bad:
        logging.info("%s: %s; extracting the image again", *bad[0])
      else:
        done.add(image_id)
    return done

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
