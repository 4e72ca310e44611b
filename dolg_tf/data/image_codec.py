"""Reading images of any kind and turning them into RGB JPEG bytes for TFRecords.

TensorFlow's JPEG decoder ignores EXIF orientation and CMYK/16-bit subtleties,
so the dataset builder hands every file to `prepare_jpeg`, which:

* keeps the original bytes when the file already is a plain RGB/YCbCr JPEG
  with no EXIF rotation (no second lossy encoding);
* otherwise decodes with Pillow, applies the EXIF orientation, converts
  grayscale, palette, RGBA/LA (alpha dropped), CMYK and 16-bit images to 8-bit
  RGB, and re-encodes as a JPEG;
* fully decodes the image in both cases, so truncated or corrupt files are
  reported here (as `ImageError`, naming the file) and not later in tf.data.

This module does not import TensorFlow, so process pools that only prepare
images start quickly.
"""

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decompression bombs explicitly instead of relying on Pillow's warning.
MAX_PIXELS = 200_000_000
DEFAULT_JPEG_QUALITY = 95
_EXIF_ORIENTATION = 0x0112


class ImageError(IOError):
  """An image could not be used; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class PreparedImage:
  """An image ready for a GLDv2 TFRecord.

  Attributes:
    jpeg: RGB JPEG bytes.
    height: rows of the (EXIF-rotated) image.
    width: columns of the (EXIF-rotated) image.
    reencoded: why the file was re-encoded (e.g. 'PNG', 'mode CMYK',
      'EXIF orientation 6'), or '' when the original bytes were kept.
  """

  jpeg: bytes
  height: int
  width: int
  reencoded: str


def to_rgb_array(image: Image.Image) -> np.ndarray:
  """Converts a loaded Pillow image of any mode to RGB uint8 [H, W, 3].

  16-bit and 32-bit integer grayscale are scaled to 8 bits (not clipped);
  float images in [0, 1] are scaled by 255; alpha channels are dropped.
  """
  mode = image.mode
  if mode.startswith("I;16") or mode == "I":
    array = np.asarray(image, dtype=np.float64)
    maximum = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
    gray = np.clip(np.round(array * (255.0 / maximum)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)
  if mode == "F":
    array = np.asarray(image, dtype=np.float64)
    gray = np.clip(np.round(array * (255.0 if array.max() <= 1.0 else 1.0)), 0, 255)
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def encode_jpeg(array: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
  """Encodes RGB uint8 [H, W, 3] (or grayscale [H, W]) as JPEG bytes.

  Raises:
    ValueError: if the array is not uint8 with shape [H, W] or [H, W, 3].
  """
  array = np.asarray(array)
  if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
    raise ValueError(f"expected uint8 [H, W, 3], got {array.dtype} {list(array.shape)}")
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=2)
  buffer = io.BytesIO()
  Image.fromarray(array, "RGB").save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def prepare_jpeg(path: str, quality: int = DEFAULT_JPEG_QUALITY) -> PreparedImage:
  """Reads `path` and returns RGB JPEG bytes for it (see module docstring).

  Args:
    path: an image file in any format Pillow reads.
    quality: JPEG quality used when the image has to be re-encoded.

  Returns:
    A PreparedImage.

  Raises:
    ImageError: naming `path`, if the file is missing, empty, not an image,
      truncated, corrupt or too large.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError as e:
    raise ImageError(f"{path}: file not found") from e
  except OSError as e:
    raise ImageError(f"{path}: cannot read ({e.strerror or e})") from e
  if not data:
    raise ImageError(f"{path}: empty file")
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      if width < 1 or height < 1:
        raise ImageError(f"{path}: empty image ({width}x{height})")
      if width * height > MAX_PIXELS:
        raise ImageError(f"{path}: image too large ({width}x{height})")
      image.load()  # Full decode: catches truncated and corrupt files.
      orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
      if image.format == "JPEG" and image.mode == "RGB" and orientation in (1, None):
        return PreparedImage(data, height, width, "")
      if image.format != "JPEG":
        reason = str(image.format or "unknown format")
      elif image.mode != "RGB":
        reason = f"mode {image.mode}"
      else:
        reason = f"EXIF orientation {orientation}"
      array = to_rgb_array(ImageOps.exif_transpose(image))
  except ImageError:
    raise
  except UnidentifiedImageError as e:
    raise ImageError(f"{path}: not a recognised image format") from e
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageError(f"{path}: cannot decode image ({e})") from e
  return PreparedImage(encode_jpeg(array, quality), array.shape[0], array.shape[1], reason)


def prepare_task(task: tuple[str, str]) -> tuple[str, PreparedImage | None, str]:
  """Process-pool worker: (image id, path) -> (id, PreparedImage or None, failure reason).

  Never raises for a bad image: the reason names the file.
  """
  image_id, path = task
  try:
    return image_id, prepare_jpeg(path), ""
  except ImageError as e:
    return image_id, None, str(e)
  except Exception as e:  # pylint: disable=broad-except (one bad image must not stop a job)
    return image_id, None, f"{path}: unexpected error ({type(e).__name__}: {e})"
