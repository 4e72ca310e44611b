"""The one image decoder of the project: any image file to RGB uint8 [H, W, 3].

Training data (data/image_codec.py) and extraction (extraction/image_loading.py)
both decode through `decode_image` (or its steps `read_file`, `open_image`,
`to_rgb_array`), so the pixels a model is trained on and the pixels it
describes come from the same code:

* the file is read whole and fully decoded, so missing, empty, truncated or
  corrupt files fail here, as an `ImageError` whose message names the file;
* images with more than `MAX_PIXELS` pixels (or the caller's `max_pixels`)
  are refused from their header, before any pixel is decoded (decompression
  bombs); Pillow's own limit (`Image.MAX_IMAGE_PIXELS`, a warning then an
  error) is switched off on import, so this one limit, with its message
  naming the file, is the only one;
* the EXIF orientation is applied;
* every Pillow mode becomes 8-bit RGB: grayscale and bilevel are repeated,
  palettes expanded, alpha dropped (as DELF's `convert('RGB')`), CMYK, YCbCr,
  LAB and HSV converted, 16/32-bit integer grayscale scaled (not clipped) and
  float images in [0, 1] scaled by 255.

Depends on NumPy and Pillow only (no TensorFlow, nothing else of dolg_tf), so
process pools that only decode images start quickly.
"""

import io
import os
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The project's one pixel limit (decompression bombs), checked from the header
# before decoding. 100 Mpixels decode to 300 MB of RGB (about 3x that at the
# peak of a mode conversion), so a few decoding threads fit in a few GB.
MAX_PIXELS = 100_000_000
# Pillow's limit would warn (or raise its own error) before ours is checked.
Image.MAX_IMAGE_PIXELS = None
EXIF_ORIENTATION_TAG = 0x0112

# What Pillow raises on a corrupt or truncated file while opening or decoding.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


class ImageError(IOError):
  """An image could not be used; the message names the file and the reason."""


def read_file(path: str | os.PathLike) -> bytes:
  """Returns the bytes of the image file `path`.

  Raises:
    ImageError: naming `path`, if it is missing, unreadable or empty.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError as e:
    raise ImageError(f"{path}: file not found") from e
  except OSError as e:
    raise ImageError(f"{path}: cannot read ({e.strerror or e})") from e
  if not data:
    raise ImageError(f"{path}: not a recognised image format (empty file)")
  return data


def _pixel_limit(max_pixels: int | None) -> int:
  limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
  if limit < 1:
    raise ValueError(f"max_pixels must be positive, got {max_pixels}")
  return limit


def check_size(image: Image.Image, name: str = "<image>", max_pixels: int | None = None) -> None:
  """Refuses an opened (not yet decoded) image that is empty or has too many pixels.

  Args:
    image: from `Image.open`; only its header is used.
    name: what error messages call the image (its path).
    max_pixels: the limit; default `MAX_PIXELS`.

  Raises:
    ImageError: naming `name`, if a side is 0 or width x height > the limit.
    ValueError: if `max_pixels` is not positive.
  """
  limit = _pixel_limit(max_pixels)
  width, height = image.size
  if width < 1 or height < 1:
    raise ImageError(f"{name}: empty image ({width}x{height})")
  if width * height > limit:
    raise ImageError(
      f"{name}: image too large ({width}x{height} = {width * height} pixels > limit {limit})"
    )


def open_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = None) -> Image.Image:
  """Opens and fully decodes encoded image bytes with Pillow.

  The image keeps its file's mode and orientation (see `to_rgb_array`); its
  `format` is Pillow's name of the file format ('JPEG', 'PNG', ...). Its size
  is checked from the header (`check_size`) before it is decoded.

  Args:
    data: the encoded image.
    name: what error messages call the image (its path).
    max_pixels: the pixel limit; default `MAX_PIXELS`.

  Returns:
    A loaded Pillow image.

  Raises:
    ImageError: naming `name`, if the bytes are empty, not an image,
      truncated, corrupt, or the image is empty or too large.
    ValueError: if `max_pixels` is not positive.
  """
  limit = _pixel_limit(max_pixels)
  if not data:
    raise ImageError(f"{name}: not a recognised image format (empty file)")
  try:
    image = Image.open(io.BytesIO(data))
  except UnidentifiedImageError as e:
    raise ImageError(f"{name}: not a recognised image format") from e
  except Image.DecompressionBombError as e:
    raise ImageError(f"{name}: image too large ({e})") from e
  except _DECODE_ERRORS as e:
    raise ImageError(f"{name}: cannot decode image ({e})") from e
  try:
    check_size(image, name, limit)
  except ImageError:
    image.close()
    raise
  try:
    image.load()  # Full decode: catches truncated and corrupt files.
  except Image.DecompressionBombError as e:
    image.close()
    raise ImageError(f"{name}: image too large ({e})") from e
  except _DECODE_ERRORS as e:
    image.close()
    raise ImageError(f"{name}: cannot decode image ({e})") from e
  return image


def exif_orientation(image: Image.Image, name: str = "<image>") -> int:
  """The EXIF orientation tag of `image`: 1 (upright) when absent or not a number.

  Raises:
    ImageError: naming `name`, if the EXIF data cannot be parsed.
  """
  try:
    orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
  except _DECODE_ERRORS as e:
    raise ImageError(f"{name}: cannot decode image (EXIF: {e})") from e
  try:
    return int(orientation)
  except (TypeError, ValueError):
    return 1  # ImageOps.exif_transpose ignores it too.


def convert_mode(image: Image.Image) -> np.ndarray:
  """Converts a loaded Pillow image of any mode to RGB uint8 [H, W, 3] (no EXIF).

  16-bit and 32-bit integer grayscale are scaled to 8 bits (not clipped);
  float images in [0, 1] are scaled by 255 (others clipped to [0, 255], NaN
  as 0); alpha channels are dropped. 16-bit RGB(A) files need no branch:
  Pillow opens them as 8-bit 'RGB'/'RGBA' ('RGB;16' and the like are raw
  modes of its decoders, never an image's mode).
  """
  mode = image.mode
  if mode.startswith("I;16") or mode == "I":
    array = np.asarray(image, dtype=np.float64)
    maximum = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
    gray = np.clip(np.round(array * (255.0 / maximum)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)
  if mode == "F":
    array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    gray = np.clip(np.round(array * (255.0 if array.max() <= 1.0 else 1.0)), 0, 255)
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
  if mode == "La":  # Premultiplied alpha: Pillow converts it to RGB only via LA.
    image = image.convert("LA")
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def to_rgb_array(image: Image.Image, name: str = "<image>") -> np.ndarray:
  """A loaded image as RGB uint8 [H, W, 3], EXIF orientation applied.

  Args:
    image: from `open_image`.
    name: what error messages call the image (its path).

  Raises:
    ImageError: naming `name`, if the EXIF data or pixels cannot be converted.
  """
  rotate = exif_orientation(image, name) != 1
  try:
    if rotate:
      image = ImageOps.exif_transpose(image)
    return convert_mode(image)
  except _DECODE_ERRORS as e:
    raise ImageError(f"{name}: cannot decode image ({e})") from e


def decode_image(
  source: str | os.PathLike | bytes, name: str | None = None, max_pixels: int | None = None
) -> np.ndarray:
  """Decodes an image file, or its bytes, to RGB uint8 [H, W, 3] (see module doc).

  Args:
    source: a path, or the encoded bytes of an image.
    name: what error messages call the image; default the path, or '<bytes>'.
    max_pixels: the pixel limit, checked from the header before decoding;
      default `MAX_PIXELS`.

  Returns:
    The RGB uint8 [H, W, 3] array, EXIF orientation applied.

  Raises:
    ImageError: naming the file, if it is missing, unreadable, empty, not an
      image, truncated, corrupt or too large.
    ValueError: if `max_pixels` is not positive.
  """
  limit = _pixel_limit(max_pixels)
  if isinstance(source, bytes | bytearray | memoryview):
    data, name = bytes(source), name or "<bytes>"
  else:
    name = name or os.fspath(source)
    data = read_file(source)
  with open_image(data, name, limit) as image:
    return to_rgb_array(image, name)
