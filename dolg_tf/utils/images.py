"""The one image decoder of the project: any image file to RGB uint8 [H, W, 3].

Training data (data/image_codec.py) and extraction (extraction/image_loading.py)
both decode through `decode_image` (or its steps `open_file`/`read_file`,
`open_image`, `to_rgb_array`), so the pixels a model is trained on and the
pixels it describes come from the same code:

* only regular files are images: a path is opened with O_NONBLOCK (a named
  pipe never blocks) and the open descriptor is checked (`os.fstat`, no race
  with a rename): directories, character or block devices (/dev/zero), named
  pipes and sockets are refused, as are files over `MAX_FILE_BYTES`, before
  anything is read (and `read_file` reads at most the limit + 1 byte);
* the file is fully decoded, so missing, empty, truncated or corrupt files
  fail here, as an `ImageError` whose message names the file;
* images with more than `MAX_PIXELS` pixels (or the caller's `max_pixels`)
  are refused from their header, before any pixel is decoded (decompression
  bombs); Pillow's own limit (`Image.MAX_IMAGE_PIXELS`, a warning then an
  error) is switched off on import, so this one limit, with its message
  naming the file, is the only one;
* so are images whose decoding would need more than `MAX_IMAGE_BYTES` of
  memory (`estimate_decode_bytes`, from the header: a 16-bit or float image
  costs more than an 8-bit one of the same size); a caller may also wait for
  (or be refused) room in a shared byte budget before the pixels are decoded
  (`before_decode`, used by extraction's loader threads);
* the EXIF orientation is applied;
* every Pillow mode becomes 8-bit RGB (pixel_modes.py): grayscale and
  bilevel are repeated, palettes expanded, alpha dropped (as DELF's
  `convert('RGB')`), CMYK, YCbCr, LAB and HSV converted, 16/32-bit integer
  grayscale scaled (not clipped) and float images in [0, 1] scaled by 255,
  converted in bands of rows, so the conversion needs little memory beyond
  the decoded image and the result.

Depends on NumPy, Pillow and pixel_modes.py only (no TensorFlow), so
process pools that only decode images start quickly.
"""

import io
import os
import stat
import struct
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from dolg_tf.utils import pixel_modes

# The project's one pixel limit (decompression bombs), checked from the header
# before decoding.
MAX_PIXELS = 100_000_000
# The largest image file read. An uncompressed 8-bit RGB image (BMP, TIFF) of
# MAX_PIXELS pixels takes 300 MB; compressed formats take far less. A larger
# file is no photo this project can use, and is refused before being read.
MAX_FILE_BYTES = 320 * 2**20
# The most memory decoding (and, in extraction, resizing) one image may need,
# by `estimate_decode_bytes`: about 7 bytes per pixel plus the file, so every
# image of up to MAX_PIXELS pixels fits (100 Mpixels: about 0.8 GB).
MAX_IMAGE_BYTES = 1280 * 2**20
# Pillow's limit would warn (or raise its own error) before ours is checked.
Image.MAX_IMAGE_PIXELS = None
# Pillow allocates decoded images in blocks of this size. Above glibc's
# largest mmap threshold (32 MB), every block of a large image is its own
# mapping, returned to the system when the image is closed; with Pillow's
# default (16 MB) they stay in the decoding thread's malloc arena, and a few
# threads keep several GB resident after their images are gone.
PILLOW_BLOCK_BYTES = 64 * 2**20
Image.core.set_block_size(PILLOW_BLOCK_BYTES)
EXIF_ORIENTATION_TAG = 0x0112

# What Pillow raises on a corrupt or truncated file while opening or decoding.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
# Room for the conversion's temporaries and Pillow's buffers, per image.
WORK_BYTES = 64 * 2**20
# Bytes per pixel of a decoded Pillow image: 1 for "1", "L", "P"; 2 for
# "I;16*"; 4 for every other mode (Pillow stores multi-band pixels in 4 bytes).
_ONE_BYTE_MODES = ("1", "L", "P")


class ImageError(IOError):
  """An image could not be used; the message names the file and the reason."""


def _file_kind(mode: int) -> str:
  if stat.S_ISDIR(mode):
    return "a directory"
  if stat.S_ISCHR(mode):
    return "a character device"
  if stat.S_ISBLK(mode):
    return "a block device"
  if stat.S_ISFIFO(mode):
    return "a named pipe"
  if stat.S_ISSOCK(mode):
    return "a socket"
  return "not a regular file"


def _not_regular(path: str, mode: int) -> ImageError:
  return ImageError(
    f"{path}: cannot read ({_file_kind(mode)}, not a regular file: only regular files are images)"
  )


def _file_limit(max_bytes: int | None) -> int:
  return MAX_FILE_BYTES if max_bytes is None else int(max_bytes)


def _too_big_file(path: str, size: int, limit: int) -> ImageError:
  return ImageError(f"{path}: file too large ({size} bytes > limit {limit} bytes)")


def open_file(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
  """Opens the image file `path` for reading, if it is a regular file of at most `max_bytes`.

  The path is checked before it is opened (no device is opened), then the
  open descriptor (opened non-blocking, so a named pipe cannot block).

  Args:
    path: the file.
    max_bytes: the size limit; default `MAX_FILE_BYTES`.

  Returns:
    A binary file object; the caller closes it.

  Raises:
    ImageError: naming `path`, if it is missing, unreadable, not a regular
      file (directory, device, named pipe, socket; the kind is named) or
      larger than the limit.
  """
  path = os.fspath(path)
  limit = _file_limit(max_bytes)
  try:
    if not stat.S_ISREG(mode := os.stat(path).st_mode):
      raise _not_regular(path, mode)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
  except ImageError:
    raise
  except FileNotFoundError as e:
    raise ImageError(f"{path}: file not found") from e
  except OSError as e:
    raise ImageError(f"{path}: cannot read ({e.strerror or e})") from e
  try:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # Replaced since the check above.
      raise _not_regular(path, info.st_mode)
    if info.st_size > limit:
      raise _too_big_file(path, info.st_size, limit)
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def read_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
  """Returns the bytes of the image file `path` (see `open_file`), at most `max_bytes`.

  Raises:
    ImageError: naming `path`, if it is missing, unreadable, not a regular
      file, larger than the limit (default `MAX_FILE_BYTES`) or empty.
  """
  path = os.fspath(path)
  limit = _file_limit(max_bytes)
  with open_file(path, limit) as f:
    try:
      data = f.read(limit + 1)
    except OSError as e:
      raise ImageError(f"{path}: cannot read ({e.strerror or e})") from e
  if len(data) > limit:  # It grew since it was opened.
    raise _too_big_file(path, len(data), limit)
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


def decoded_pixel_bytes(mode: str) -> int:
  """Bytes per pixel of a decoded Pillow image of `mode`."""
  if mode in _ONE_BYTE_MODES:
    return 1
  if mode.startswith("I;16"):
    return 2
  return 4


def estimate_decode_bytes(image: Image.Image, file_bytes: int = 0) -> int:
  """An upper bound of the memory `decode_image` needs for an opened (not decoded) image.

  The file's bytes, the decoded Pillow image (`decoded_pixel_bytes` per
  pixel) with the RGB uint8 result (3 per pixel, EXIF rotation included:
  `pixel_modes.convert_mode` writes it rotated), and a fixed allowance for the
  conversion's bands of rows.

  Args:
    image: from `Image.open`; only its header (size, mode) is used.
    file_bytes: size of the encoded file.
  """
  width, height = image.size
  pixels = int(width) * int(height)
  per_pixel = decoded_pixel_bytes(image.mode) + 3
  return int(file_bytes) + pixels * per_pixel + WORK_BYTES


def check_memory(
  image: Image.Image, name: str, needed: int, max_image_bytes: int | None = None
) -> None:
  """Refuses an image whose decoding needs more than `max_image_bytes` (default MAX_IMAGE_BYTES).

  Raises:
    ImageError: naming `name`, the size, the mode and the estimate.
  """
  limit = MAX_IMAGE_BYTES if max_image_bytes is None else int(max_image_bytes)
  if needed > limit:
    width, height = image.size
    raise ImageError(
      f"{name}: image needs too much memory ({width}x{height}, mode {image.mode}: about "
      f"{needed} bytes to decode > limit {limit} bytes)"
    )


def open_image(
  source: bytes | BinaryIO,
  name: str = "<bytes>",
  max_pixels: int | None = None,
  *,
  max_image_bytes: int | None = None,
  estimate: Callable[[Image.Image, int], int] | None = None,
  before_decode: Callable[[int], None] | None = None,
) -> Image.Image:
  """Opens and fully decodes an encoded image (bytes or a binary file) with Pillow.

  The image keeps its file's mode and orientation (see `to_rgb_array`); its
  `format` is Pillow's name of the file format ('JPEG', 'PNG', ...). From the
  header, before any pixel is decoded: its size is checked (`check_size`),
  the memory decoding needs is estimated (`estimate`) and checked
  (`check_memory`), then `before_decode(estimate)` is called.

  Args:
    source: the encoded image, or a binary file (from `open_file`) that the
      caller keeps open until the image is closed.
    name: what error messages call the image (its path).
    max_pixels: the pixel limit; default `MAX_PIXELS`.
    max_image_bytes: the memory limit; default `MAX_IMAGE_BYTES`.
    estimate: (image, file bytes) -> bytes; default `estimate_decode_bytes`.
    before_decode: called with the estimate before decoding (e.g. to wait
      for room in a memory budget); what it raises is raised.

  Returns:
    A loaded Pillow image.

  Raises:
    ImageError: naming `name`, if the bytes are empty, not an image,
      truncated, corrupt, or the image is empty or too large.
    ValueError: if `max_pixels` is not positive.
  """
  limit = _pixel_limit(max_pixels)
  if isinstance(source, bytes | bytearray | memoryview):
    file_bytes, fp = len(source), io.BytesIO(source)
  else:
    fp = source
    file_bytes = os.fstat(fp.fileno()).st_size
  if not file_bytes:
    raise ImageError(f"{name}: not a recognised image format (empty file)")
  try:
    image = Image.open(fp)
  except UnidentifiedImageError as e:
    raise ImageError(f"{name}: not a recognised image format") from e
  except Image.DecompressionBombError as e:
    raise ImageError(f"{name}: image too large ({e})") from e
  except _DECODE_ERRORS as e:
    raise ImageError(f"{name}: cannot decode image ({e})") from e
  try:
    check_size(image, name, limit)
    needed = (estimate or estimate_decode_bytes)(image, file_bytes)
    check_memory(image, name, needed, max_image_bytes)
    if before_decode is not None:
      before_decode(needed)
    try:
      image.load()  # Full decode: catches truncated and corrupt files.
    except Image.DecompressionBombError as e:
      raise ImageError(f"{name}: image too large ({e})") from e
    except _DECODE_ERRORS as e:
      raise ImageError(f"{name}: cannot decode image ({e})") from e
  except BaseException:
    image.close()
    raise
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


def to_rgb_array(image: Image.Image, name: str = "<image>") -> np.ndarray:
  """A loaded image as RGB uint8 [H, W, 3], EXIF orientation applied.

  Args:
    image: from `open_image`.
    name: what error messages call the image (its path).

  Raises:
    ImageError: naming `name`, if the EXIF data or pixels cannot be converted.
  """
  return _convert(image, name)


def _convert(image: Image.Image, name: str) -> np.ndarray:
  orientation = exif_orientation(image, name)
  try:
    return pixel_modes.convert_mode(image, orientation)
  except _DECODE_ERRORS as e:
    raise ImageError(f"{name}: cannot decode image ({e})") from e


def decode_image(
  source: str | os.PathLike | bytes,
  name: str | None = None,
  max_pixels: int | None = None,
  *,
  max_image_bytes: int | None = None,
  estimate: Callable[[Image.Image, int], int] | None = None,
  before_decode: Callable[[int], None] | None = None,
) -> np.ndarray:
  """Decodes an image file, or its bytes, to RGB uint8 [H, W, 3] (see module doc).

  A file is decoded from its descriptor (`open_file`), never read whole
  into memory first.

  Args:
    source: a path, or the encoded bytes of an image.
    name: what error messages call the image; default the path, or '<bytes>'.
    max_pixels: the pixel limit, checked from the header before decoding;
      default `MAX_PIXELS`.
    max_image_bytes, estimate, before_decode: see `open_image`.

  Returns:
    The RGB uint8 [H, W, 3] array, EXIF orientation applied.

  Raises:
    ImageError: naming the file, if it is missing, unreadable, not a regular
      file, empty, not an image, truncated, corrupt or too large.
    ValueError: if `max_pixels` is not positive.
  """
  limit = _pixel_limit(max_pixels)
  options = dict(max_image_bytes=max_image_bytes, estimate=estimate, before_decode=before_decode)
  if isinstance(source, bytes | bytearray | memoryview):
    name = name or "<bytes>"
    with open_image(bytes(source), name, limit, **options) as image:
      return _convert(image, name)
  name = name or os.fspath(source)
  with open_file(source) as f, open_image(f, name, limit, **options) as image:
    return _convert(image, name)
