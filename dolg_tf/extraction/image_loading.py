"""Image loading and resizing as DELF does it, hardened for odd files.

`load_image` returns RGB uint8 [H, W, 3] for any image Pillow reads: EXIF
orientation applied; grayscale, palette, RGBA/LA (alpha dropped, as DELF's
`convert('RGB')`), CMYK and 16-bit images converted. `resize_image` follows
DELF's `utils.ResizeImage` for max/min image size and square images.
"""

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decompression bombs explicitly instead of Pillow's warning.
MAX_PIXELS = 200_000_000


class ImageLoadError(IOError):
  """An image could not be read; the message names the file and the reason."""


def _to_uint8_rgb(image: Image.Image) -> np.ndarray:
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    # 16-bit (or 32-bit integer) grayscale: scale to 8 bits instead of clipping.
    array = np.asarray(image, dtype=np.float64)
    maximum = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    gray = np.clip(np.round(array * (255.0 / maximum)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)
  if image.mode == "F":
    array = np.asarray(image, dtype=np.float64)
    gray = np.clip(np.round(array * (255.0 if array.max() <= 1.0 else 1.0)), 0, 255)
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
  if image.mode in ("RGB;16", "RGBA;16", "RGB;16B"):
    image = image.convert("RGB")
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image(path: str) -> np.ndarray:
  """Reads `path` as RGB uint8 [H, W, 3].

  Raises:
    ImageLoadError: naming the file, if it is missing, unreadable, truncated,
      empty or too large.
  """
  try:
    with Image.open(path) as image:
      if image.width * image.height > MAX_PIXELS:
        raise ImageLoadError(f"{path}: image too large ({image.width}x{image.height})")
      if image.width < 1 or image.height < 1:
        raise ImageLoadError(f"{path}: empty image")
      image.load()
      image = ImageOps.exif_transpose(image)
      array = _to_uint8_rgb(image)
  except ImageLoadError:
    raise
  except FileNotFoundError as e:
    raise ImageLoadError(f"{path}: file not found") from e
  except UnidentifiedImageError as e:
    raise ImageLoadError(f"{path}: not a recognised image format") from e
  except (OSError, ValueError, SyntaxError) as e:
    raise ImageLoadError(f"{path}: cannot decode image: {e}") from e
  return array


def load_and_preprocess(path: str, box, preprocess):
  """`load_image(path)` then `preprocess(image, box)`; a ValueError of the
  preprocessing (e.g. an empty crop box) becomes an ImageLoadError naming the file.
  """
  image = load_image(path)
  try:
    return preprocess(image, box)
  except ValueError as e:
    raise ImageLoadError(f"{path}: {e}") from e


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


def crop_box(image: np.ndarray, box) -> np.ndarray:
  """Crops (x1, y1, x2, y2) as the Revisited Oxford/Paris protocol does for queries.

  Coordinates are rounded to the nearest integer, as DELF's extraction does
  for ROxf/RPar query boxes, and clipped to the image.

  Raises:
    ValueError: if the box is empty after clipping.
  """
  height, width = image.shape[:2]
  x1, y1, x2, y2 = (int(round(float(v))) for v in box)
  x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
  if x2 <= x1 or y2 <= y1:
    raise ValueError(f"empty crop box {tuple(box)} for an image of {width}x{height}")
  return image[y1:y2, x1:x2]
