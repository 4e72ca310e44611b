"""Any Pillow image mode to RGB uint8 [H, W, 3], in bands of rows, EXIF orientation applied.

The conversion step of images.decode_image (see its module doc for the rules);
every conversion is per pixel, so bands of about _BAND_PIXELS pixels are
converted at a time and the only full-size array made is the result.
"""

import numpy as np
from PIL import Image

# Pixels converted at a time by convert_mode (float64 temporaries of 8 MB).
_BAND_PIXELS = 1 << 20
# 16-bit value -> round(v / 257), the 8-bit value (v / 257 is never a tie).
_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.int64) + 128) // 257).astype(np.uint8)


def _unoriented_view(out: np.ndarray, orientation: int) -> np.ndarray:
  """The view of an oriented array `out` in the coordinates of the file's pixels.

  Writing the file's pixel (y, x) at [y, x] of this view puts it where
  `ImageOps.exif_transpose` would.
  """
  if orientation == 2:  # FLIP_LEFT_RIGHT
    return out[:, ::-1]
  if orientation == 3:  # ROTATE_180
    return out[::-1, ::-1]
  if orientation == 4:  # FLIP_TOP_BOTTOM
    return out[::-1]
  if orientation == 5:  # TRANSPOSE
    return out.swapaxes(0, 1)
  if orientation == 6:  # ROTATE_270 (shown 90 degrees clockwise)
    return np.rot90(out, k=1)
  if orientation == 7:  # TRANSVERSE
    return np.rot90(out.swapaxes(0, 1), k=2)
  if orientation == 8:  # ROTATE_90 (shown 90 degrees counter-clockwise)
    return np.rot90(out, k=-1)
  return out


def _bands(image: Image.Image):
  """(first row, end row, Pillow image of those rows) for bands of about _BAND_PIXELS pixels."""
  width, height = image.size
  rows = max(1, _BAND_PIXELS // max(width, 1))
  for top in range(0, height, rows):
    bottom = min(height, top + rows)
    yield top, bottom, image.crop((0, top, width, bottom))


def _output(image: Image.Image, orientation: int) -> tuple[np.ndarray, np.ndarray]:
  """The RGB uint8 result array of `image` shown in `orientation`, and its view to fill."""
  width, height = image.size
  oriented = orientation in range(5, 9)
  out = np.empty((width, height, 3) if oriented else (height, width, 3), dtype=np.uint8)
  return out, _unoriented_view(out, orientation)


def _gray_to_rgb(image: Image.Image, orientation: int) -> np.ndarray:
  """RGB uint8 of a one-band integer ('I;16*', 'I') or float ('F') image.

  16-bit values v become round(v / 257) (= round(v * 255 / 65535)); 32-bit
  integers the same if one exceeds 255, else v; floats v * 255 if none
  exceeds 1, else v (NaN as 0); all clipped to [0, 255]. Integers use
  integer arithmetic (exact: v / 257 is never a tie), floats float64 bands.
  """
  mode = image.mode
  top = None
  if mode == "I":
    top = max(int(np.asarray(band).max()) for _, _, band in _bands(image))
  elif mode == "F":
    top = max(
      float(np.nan_to_num(np.asarray(band, dtype=np.float64), nan=0.0).max())
      for _, _, band in _bands(image)
    )
  out, view = _output(image, orientation)
  for first, end, band in _bands(image):
    if mode == "F":
      values = np.nan_to_num(np.asarray(band, dtype=np.float64), nan=0.0)
      with np.errstate(over="ignore"):  # +-inf became +-1.8e308: * 255 is +-inf, then clipped
        values *= 255.0 if top <= 1.0 else 1.0
      np.round(values, out=values)
    elif mode != "I":
      _put_gray(view[first:end], _SIXTEEN_TO_EIGHT[np.asarray(band)])
      continue
    else:
      values = np.asarray(band).astype(np.int64)
      if top > 255:
        values += 128
        values //= 257
    np.clip(values, 0, 255, out=values)
    _put_gray(view[first:end], values.astype(np.uint8))
  return out


def _put_gray(rgb: np.ndarray, gray: np.ndarray) -> None:
  """rgb[..., c] = gray for the 3 channels (faster than broadcasting gray[..., None])."""
  for channel in range(3):
    rgb[..., channel] = gray


def convert_mode(image: Image.Image, orientation: int = 1) -> np.ndarray:
  """Converts a loaded Pillow image of any mode to RGB uint8 [H, W, 3].

  16-bit and 32-bit integer grayscale are scaled to 8 bits (not clipped);
  float images in [0, 1] are scaled by 255 (others clipped to [0, 255], NaN
  as 0); alpha channels are dropped. 16-bit RGB(A) files need no branch:
  Pillow opens them as 8-bit 'RGB'/'RGBA' ('RGB;16' and the like are raw
  modes of its decoders, never an image's mode). The image is converted in
  bands of rows (every conversion is per pixel), so the only full-size array
  made is the result; with an EXIF `orientation` (2-8) the bands are
  written where that orientation puts them (as `ImageOps.exif_transpose`).
  """
  mode = image.mode
  if mode.startswith("I;16") or mode in ("I", "F"):
    return _gray_to_rgb(image, orientation)
  out, view = _output(image, orientation)
  for top, bottom, band in _bands(image):
    if mode == "La":  # Premultiplied alpha: Pillow converts it to RGB only via LA.
      band = band.convert("LA")
    if band.mode != "RGB":
      band = band.convert("RGB")
    view[top:bottom] = np.asarray(band, dtype=np.uint8)
  return out
