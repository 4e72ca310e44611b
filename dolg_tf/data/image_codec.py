"""Reading images of any kind and turning them into RGB JPEG bytes for TFRecords.

TensorFlow's JPEG decoder ignores EXIF orientation and CMYK/16-bit subtleties,
so the dataset builder hands every file to `prepare_jpeg`, which:

* keeps the original bytes when the file already is a plain RGB/YCbCr JPEG
  with no EXIF rotation (no second lossy encoding);
* otherwise decodes it with the project's one decoder (dolg_tf/utils/images.py:
  EXIF orientation applied; grayscale, palette, RGBA/LA (alpha dropped), CMYK
  and 16-bit images converted to 8-bit RGB) and re-encodes it as a JPEG;
* fully decodes the image in both cases, so truncated or corrupt files are
  reported here (as `images.ImageError`, naming the file) and not later in
  tf.data;
* reads files as extraction does (`images.read_file`): only regular files
  (a device, named pipe, socket or directory named like an image is refused,
  never read or waited on), at most `images.MAX_FILE_BYTES`, and images whose
  decoding would need more than `images.MAX_IMAGE_BYTES` are refused from
  their header.

This module does not import TensorFlow, so process pools that only prepare
images start quickly.
"""

import dataclasses
import io

import numpy as np
from PIL import Image

from dolg_tf.utils import images

DEFAULT_JPEG_QUALITY = 95


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
    images.ImageError: naming `path`, if the file is missing, not a regular
      file, empty, not an image, truncated, corrupt or too large (file size,
      pixels or memory).
  """
  data = images.read_file(path)
  with images.open_image(data, path) as image:
    orientation = images.exif_orientation(image, path)
    if image.format == "JPEG" and image.mode == "RGB" and orientation == 1:
      return PreparedImage(data, image.height, image.width, "")
    if image.format != "JPEG":
      reason = str(image.format or "unknown format")
    elif image.mode != "RGB":
      reason = f"mode {image.mode}"
    else:
      reason = f"EXIF orientation {orientation}"
    array = images.to_rgb_array(image, path)
  return PreparedImage(encode_jpeg(array, quality), array.shape[0], array.shape[1], reason)


def prepare_task(task: tuple[str, str]) -> tuple[str, PreparedImage | None, str]:
  """Process-pool worker: (image id, path) -> (id, PreparedImage or None, failure reason).

  Never raises for a bad image: the reason names the file.
  """
  image_id, path = task
  try:
    return image_id, prepare_jpeg(path), ""
  except images.ImageError as e:
    return image_id, None, str(e)
  except Exception as e:  # pylint: disable=broad-except (one bad image must not stop a job)
    return image_id, None, f"{path}: unexpected error ({type(e).__name__}: {e})"
