"""The image pyramid of an extraction: its scales and the input sizes the network may see.

A DolgConfig's `image_scales` (completed from the SavedModel when empty) is
the pyramid; `global_config.image_scales_ind` selects the scales pooled into
the global descriptor (all when empty). The export resizes an image to
round(side x scale) at each scale it is given, so two limits apply to what
the network sees: under MIN_INPUT_SIDE (DELF's 10 px rule,
io.image_loading.MIN_IMAGE_SIZE) an input holds no image content; over
MAX_INPUT_SIDE one forward needs GBs (a ResNet-50 stem output alone is
(4096 / 2)^2 x 64 float32 = 1 GiB at 4096 px) and images fail late with
ResourceExhaustedError. 4096 is twice DELG's largest input (1024 px x 2.0).

`pyramid_errors` checks a config against the limits when it is loaded (what
max/min_image_size guarantee); `ImagePyramid.check_image` checks each resized
image (an unlimited max_image_size leaves sides unknown until then).
NumPy only, no TensorFlow.
"""

import dataclasses
import math

import numpy as np

MIN_INPUT_SIDE = 10
MAX_INPUT_SIDE = 4096


def _positive_finite(value: float) -> bool:
  return math.isfinite(value) and value > 0


def pyramid_errors(config) -> list[str]:
  """image_scales against max/min_image_size of a DolgConfig: inputs the network cannot use.

  With max_image_size set, the largest side of every input is at most
  max_image_size x scale: under MIN_INPUT_SIDE at the smallest scale no image
  has content there; over MAX_INPUT_SIDE at the largest scale large images
  fail late. With max_image_size -1 (no limit) sides are unknown here: the
  extractor checks each image (`ImagePyramid.check_image`, a failures row);
  only min_image_size x the largest scale, which every image reaches, is checked.
  """
  scales = [s for s in config.image_scales if _positive_finite(s)]
  if not scales:
    return []
  errors = []
  smallest, largest = min(scales), max(scales)
  if config.max_image_size > 0:
    side = max(round(config.max_image_size * smallest), 1)
    if side < MIN_INPUT_SIDE:
      errors.append(
        f"image_scales: scale {smallest:g} makes even a {config.max_image_size} px image "
        f"{side} px wide (max_image_size x scale), under the {MIN_INPUT_SIDE} px the network "
        "needs; remove the scale or raise max_image_size"
      )
    side = round(config.max_image_size * largest)
    if side > MAX_INPUT_SIDE:
      errors.append(
        f"image_scales, max_image_size: scale {largest:g} x max_image_size "
        f"{config.max_image_size} = {side} px exceeds the {MAX_INPUT_SIDE} px the network may "
        "see (memory); lower one of them"
      )
  elif config.min_image_size > 0 and round(config.min_image_size * largest) > MAX_INPUT_SIDE:
    errors.append(
      f"image_scales, min_image_size: scale {largest:g} x min_image_size "
      f"{config.min_image_size} = {round(config.min_image_size * largest)} px exceeds the "
      f"{MAX_INPUT_SIDE} px the network may see (memory); lower one of them"
    )
  return errors


@dataclasses.dataclass(frozen=True)
class ImagePyramid:
  """The scales one extraction gives the SavedModel, from a completed DolgConfig.

  Attributes:
    image_scales: the whole pyramid, float32 [S].
    global_indices: int [G], the scales pooled into the global descriptor.
    whole: the whole pyramid is run (DELG's local features); else only the
      global scales (global-only extraction computes nothing else).
    use_global: a global descriptor is made (its scales must see an image).
  """

  image_scales: np.ndarray
  global_indices: np.ndarray
  whole: bool
  use_global: bool = True

  @classmethod
  def from_config(cls, config, whole: bool) -> "ImagePyramid":
    """The pyramid of a DolgConfig whose image_scales are set (see the module doc)."""
    image_scales = np.array(config.image_scales, dtype=np.float32)
    indices = list(config.global_config.image_scales_ind) or list(range(len(image_scales)))
    return cls(image_scales, np.array(indices, np.int32), whole, bool(config.use_global_features))

  @property
  def global_scales(self) -> np.ndarray:
    """float32 [G]: the scales the global descriptor pools."""
    return self.image_scales[self.global_indices]

  @property
  def scales(self) -> np.ndarray:
    """float32: the scales given to the signature (its `input_scales`)."""
    return self.image_scales if self.whole else self.global_scales

  @property
  def signature_global_indices(self) -> np.ndarray:
    """int32 [G]: the global scales as indices into `scales` (`input_global_scales_ind`)."""
    if self.whole:
      return self.global_indices
    return np.arange(len(self.global_indices), dtype=np.int32)

  def check_image(self, image: np.ndarray) -> None:
    """Refuses a resized image the network would see at a useless size at some scale.

    With a global descriptor, both sides must be at least MIN_INPUT_SIDE px at
    the smallest global scale (DELF's 10 px rule, applied to what the network
    sees); at the largest scale run, the largest side must be at most
    MAX_INPUT_SIDE px (beyond it a forward needs GBs: e.g. a config with
    max_image_size -1, no limit, and large photos). An image already under
    MIN_INPUT_SIDE is left to image_loading.check_min_size's message.

    Raises:
      ValueError: one line with the sizes and the scale (the pipeline adds
        the file and records a failure).
    """
    height, width = (int(d) for d in np.shape(image)[:2])
    if min(height, width) < MIN_INPUT_SIDE:
      return
    if self.use_global and len(self.global_indices):
      scale = float(np.min(self.global_scales))
      sides = [max(round(d * scale), 1) for d in (width, height)]
      if min(sides) < MIN_INPUT_SIDE:
        raise ValueError(
          f"image too small for image_scales: {width}x{height} after resizing is "
          f"{sides[0]}x{sides[1]} px at scale {scale:g}; both sides must be at least "
          f"{MIN_INPUT_SIDE} px at every global scale, no descriptor written"
        )
    scale = float(np.max(self.scales))
    sides = [round(d * scale) for d in (width, height)]
    if max(sides) > MAX_INPUT_SIDE:
      raise ValueError(
        f"image too large for image_scales: {width}x{height} after resizing is "
        f"{sides[0]}x{sides[1]} px at scale {scale:g}, over the {MAX_INPUT_SIDE} px "
        "the network may see; set max_image_size in the config"
      )
