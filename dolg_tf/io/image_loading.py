"""Image loading and resizing as DELF does it, hardened for odd files.

`load_image` returns RGB uint8 [H, W, 3] for any image Pillow reads, decoded by
the project's one decoder (dolg_tf/utils/images.py: EXIF orientation applied;
grayscale, palette, RGBA/LA (alpha dropped, as DELF's `convert('RGB')`), CMYK
and 16-bit images converted; more than `images.MAX_PIXELS` pixels, or the
caller's `max_pixels`, refused from the header before decoding; so are images
whose loading would need more than `images.MAX_IMAGE_BYTES`, by
`estimate_load_bytes`, and a caller may wait for room in a memory budget
before the pixels are decoded: `before_decode`).
`resize_image` follows DELF's `utils.ResizeImage` for max/min image size and
square images. `load_and_preprocess` refuses an image whose crop-and-resize
result has a side under `MIN_IMAGE_SIZE` (10) pixels: DELF's extractor returns
empty features below 10 x 10 after resizing; here no descriptor is made and
the image is a failure with that reason.
"""

from collections.abc import Callable

import numpy as np
from PIL import Image

from dolg_tf.utils import images

# DELF's _MIN_HEIGHT / _MIN_WIDTH: below this, after resizing, no features.
MIN_IMAGE_SIZE = 10
# The default memory budget of extraction's loader threads together
# (pipeline.run_extraction's max_bytes_in_flight): the images being decoded
# (estimate_load_bytes) and those waiting for the model. Equal to the
# per-image limit, so every image that may be decoded at all fits alone.
MAX_BYTES_IN_FLIGHT = images.MAX_IMAGE_BYTES


def estimate_load_bytes(image: Image.Image, file_bytes: int = 0, box=None) -> int:
  """An upper bound of the memory `load_and_preprocess` needs, from an image's header.

  The larger of decoding (images.estimate_decode_bytes) and resizing, once
  the file is closed: the RGB array (3 bytes per pixel) with Pillow's copy of
  it (4; a crop box's region is first copied out of the array, 3 more), plus
  a fixed allowance for temporaries.

  Args:
    image: from `Image.open`; only its header (size, mode) is used.
    file_bytes: size of the encoded file.
    box: the crop box, if any.
  """
  width, height = image.size
  pixels = int(width) * int(height)
  resize = pixels * (3 + (4 if box is None else 7))
  decode = images.estimate_decode_bytes(image, file_bytes)
  return max(decode, resize + images.WORK_BYTES)


def load_image(
  path: str,
  max_pixels: int | None = None,
  *,
  box=None,
  before_decode: Callable[[int], None] | None = None,
) -> np.ndarray:
  """Reads `path` as RGB uint8 [H, W, 3].

  Args:
    path: the image file (a regular file; see images.open_file).
    max_pixels: pixel limit, checked from the header; default images.MAX_PIXELS.
    box: the crop box that will be applied, if any (for the memory estimate).
    before_decode: called with `estimate_load_bytes` before the pixels are
      decoded (e.g. to wait for room in a memory budget).

  Raises:
    images.ImageError: naming the file, if it is missing, unreadable, not a
      regular file, truncated, empty or too large (pixels, file or memory).
  """
  return images.decode_image(
    path,
    max_pixels=max_pixels,
    estimate=lambda image, file_bytes: estimate_load_bytes(image, file_bytes, box),
    before_decode=before_decode,
  )


def check_min_size(image: np.ndarray, name: str, min_size: int = MIN_IMAGE_SIZE) -> None:
  """Refuses an image (as given to the model) with a side under `min_size` pixels.

  Raises:
    images.ImageError: naming `name` and the size.
  """
  height, width = np.shape(image)[:2]
  if height < min_size or width < min_size:
    raise images.ImageError(
      f"{name}: image too small ({width}x{height} after cropping and resizing; "
      f"both sides must be at least {min_size} px), no descriptor written"
    )


def load_and_preprocess(
  path: str,
  box,
  preprocess,
  max_pixels: int | None = None,
  min_size: int = MIN_IMAGE_SIZE,
  before_decode: Callable[[int], None] | None = None,
):
  """`load_image(path)` then `preprocess(image, box)`, then the size check.

  A ValueError of the preprocessing (e.g. an empty crop box) becomes an
  images.ImageError naming the file. The result (an array, or an object with
  an `image` array such as DELG's PreprocessedImage) must have both sides of
  at least `min_size` pixels, as DELF extracts nothing under 10 x 10.
  `before_decode` is passed to `load_image`.

  Raises:
    images.ImageError: naming the file.
  """
  image = load_image(path, max_pixels, box=box, before_decode=before_decode)
  try:
    result = preprocess(image, box)
  except ValueError as e:
    raise images.ImageError(f"{path}: {e}") from e
  check_min_size(getattr(result, "image", result), path, min_size)
  return result


def resize_image(
  image: np.ndarray,
  max_image_size: int = -1,
  min_image_size: int = -1,
  square: bool = False,
  resize_factor: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Resizes exactly as DELF's utils.ResizeImage.

  Both limits refer to the largest side (scaled by `resize_factor`): it is
  reduced to the max if larger, else raised to the min if smaller. With
  `square`, the output is L x L for the (rescaled) largest side L. -1 disables
  a limit. Bilinear resampling with Pillow, as DELF.

  Returns:
    (resized uint8 image, scale factors [sy, sx] new/old).

  Raises:
    ValueError: on inconsistent sizes.
  """
  if resize_factor < 0:
    raise ValueError(f"resize_factor must be non-negative, got {resize_factor}")
  if max_image_size >= 0 and min_image_size >= 0 and max_image_size < min_image_size:
    raise ValueError(f"max_image_size {max_image_size} < min_image_size {min_image_size}")
  height, width = image.shape[:2]
  max_size = resize_factor * max_image_size
  min_size = resize_factor * min_image_size
  largest_side = max(height, width)
  if max_image_size >= 0 and largest_side > max_size:
    scale = max_size / largest_side
  elif min_image_size >= 0 and largest_side < min_size:
    scale = min_size / largest_side
  elif square and height != width:
    scale = 1.0
  else:
    return image, np.ones(2)
  if square:
    new_width = new_height = int(round(largest_side * scale))
  else:
    new_width, new_height = int(round(width * scale)), int(round(height * scale))
  new_width, new_height = max(new_width, 1), max(new_height, 1)
  resized = Image.fromarray(image).resize((new_width, new_height), Image.BILINEAR)
  return np.asarray(resized), np.array([new_height / height, new_width / width])


def crop_box(image: np.ndarray, box, truncate: bool = False) -> np.ndarray:
  """Crops (x1, y1, x2, y2) as the Revisited Oxford/Paris protocol does for queries.

  Coordinates are rounded to the nearest integer, as DELF's extraction does
  for ROxf/RPar query boxes, or with `truncate` cut towards zero, as the
  official DOLG evaluation does; then clipped to the image.

  Raises:
    ValueError: if the box is empty after clipping.
  """
  height, width = image.shape[:2]
  to_int = int if truncate else (lambda v: int(round(v)))
  x1, y1, x2, y2 = (to_int(float(v)) for v in box)
  x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
  if x2 <= x1 or y2 <= y1:
    raise ValueError(f"empty crop box {tuple(box)} for an image of {width}x{height}")
  return image[y1:y2, x1:x2]
