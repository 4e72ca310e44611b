"""Drawing primitives on RGB uint8 [H, W, 3] arrays: the pictures of dolg_tf.visualization.

Every function takes and returns NumPy RGB uint8 arrays (the project's image
convention) and leaves its input unchanged; Pillow does the drawing. Points
and boxes are in (x, y) pixel coordinates (column, row), as Pillow's.

  overlay = heatmap_overlay(image, attention_map)      # jet colours, blended
  tile = add_border(thumbnail(image, 96), (0, 160, 0), 4)
  save_png(path, hstack([a, b]))                       # atomic, optimised

Depends on NumPy and Pillow only.
"""

import functools
import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dolg_tf.utils import files

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
  """`image` as a C-contiguous RGB uint8 [H, W, 3] array.

  Raises:
    ValueError: naming `name`, for another shape or dtype.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"{name}: expected RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
  return np.ascontiguousarray(image)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """`image` resized to width x height (bilinear; area-averaged when shrinking)."""
  image = check_image(image)
  if image.shape[:2] == (height, width):
    return image.copy()
  pil = Image.fromarray(image)
  shrinking = width < image.shape[1] and height < image.shape[0]
  method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
  return np.array(pil.resize((max(1, width), max(1, height)), method))


def fit(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
  """`image` scaled so its longer side is `max_side` (never enlarged), and the scale used."""
  image = check_image(image)
  height, width = image.shape[:2]
  scale = min(1.0, max_side / max(height, width))
  if scale == 1.0:
    return image.copy(), 1.0
  return resize(image, round(width * scale), round(height * scale)), scale


def thumbnail(
  image: np.ndarray, size: int, background: Color = WHITE
) -> tuple[np.ndarray, float, tuple[int, int]]:
  """`image` scaled to fit a size x size square (enlarged if smaller), centred on `background`.

  Returns:
    (the size x size tile, the scale applied, the (x, y) offset of the image
    in the tile): a point p of `image` is at offset + scale * p in the tile.
  """
  image = check_image(image)
  height, width = image.shape[:2]
  scale = size / max(height, width)
  new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
  tile = np.empty([size, size, 3], np.uint8)
  tile[:] = background
  x0, y0 = (size - new_w) // 2, (size - new_h) // 2
  tile[y0 : y0 + new_h, x0 : x0 + new_w] = resize(image, new_w, new_h)
  return tile, scale, (x0, y0)


def add_border(image: np.ndarray, color: Color, width: int) -> np.ndarray:
  """`image` inside a frame of `width` pixels of `color` (the result is 2 * width larger)."""
  image = check_image(image)
  height, image_width = image.shape[:2]
  out = np.empty([height + 2 * width, image_width + 2 * width, 3], np.uint8)
  out[:] = color
  out[width : width + height, width : width + image_width] = image
  return out


def pad(image: np.ndarray, height: int, width: int, background: Color = WHITE) -> np.ndarray:
  """`image` at the top left of a height x width canvas of `background` (not cropped)."""
  image = check_image(image)
  out = np.empty([max(height, image.shape[0]), max(width, image.shape[1]), 3], np.uint8)
  out[:] = background
  out[: image.shape[0], : image.shape[1]] = image
  return out


def _stack(images: Sequence[np.ndarray], gap: int, background: Color, axis: int) -> np.ndarray:
  """Images along `axis` (1 side by side, 0 one above the other), aligned at the top left."""
  images = [check_image(image) for image in images]
  shape = [max(image.shape[i] for image in images) for i in (0, 1)]
  shape[axis] = sum(image.shape[axis] for image in images) + gap * (len(images) - 1)
  out = np.empty(shape + [3], np.uint8)
  out[:] = background
  offset = 0
  for image in images:
    start = [0, 0]
    start[axis] = offset
    out[start[0] : start[0] + image.shape[0], start[1] : start[1] + image.shape[1]] = image
    offset += image.shape[axis] + gap
  return out


def hstack(images: Sequence[np.ndarray], gap: int = 0, background: Color = WHITE) -> np.ndarray:
  """Images side by side, top-aligned, `gap` pixels of `background` between them."""
  return _stack(images, gap, background, axis=1)


def vstack(images: Sequence[np.ndarray], gap: int = 0, background: Color = WHITE) -> np.ndarray:
  """Images one above the other, left-aligned, `gap` pixels of `background` between them."""
  return _stack(images, gap, background, axis=0)


def _draw(image: np.ndarray, paint) -> np.ndarray:
  pil = Image.fromarray(check_image(image))
  paint(ImageDraw.Draw(pil))
  return np.array(pil)


def draw_rectangle(
  image: np.ndarray, box: Sequence[float], color: Color, width: int = 2
) -> np.ndarray:
  """A rectangle outline (x1, y1, x2, y2) of `width` pixels drawn inside the box."""
  x1, y1, x2, y2 = (float(v) for v in box)
  return _draw(image, lambda d: d.rectangle([x1, y1, x2, y2], outline=color, width=width))


def draw_lines(
  image: np.ndarray, segments: Sequence[Sequence[float]], color: Color, width: int = 1
) -> np.ndarray:
  """Line segments (x1, y1, x2, y2), each `width` pixels wide."""

  def paint(d):
    for x1, y1, x2, y2 in segments:
      d.line([(float(x1), float(y1)), (float(x2), float(y2))], fill=color, width=width)

  return _draw(image, paint)


def draw_points(
  image: np.ndarray, points: Sequence[Sequence[float]], color: Color, radius: float = 1.5
) -> np.ndarray:
  """Filled discs of `radius` pixels centred on the (x, y) `points`."""

  def paint(d):
    for x, y in points:
      d.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)

  return _draw(image, paint)


@functools.cache
def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  """Pillow's built-in font at `size` pixels (no font file needed)."""
  return ImageFont.load_default(size)


def text_size(text: str, size: int = 12) -> tuple[int, int]:
  """(width, height) in pixels of `text` in `font(size)`."""
  left, top, right, bottom = font(size).getbbox(text)
  return int(np.ceil(right - min(0, left))), int(np.ceil(bottom - min(0, top)))


def draw_text(
  image: np.ndarray,
  xy: tuple[float, float],
  text: str,
  color: Color = BLACK,
  size: int = 12,
  background: Color | None = None,
) -> np.ndarray:
  """`text` with its top left at `xy`, optionally on a filled `background` box."""

  def paint(d):
    if background is not None:
      width, height = text_size(text, size)
      d.rectangle([xy[0] - 2, xy[1] - 1, xy[0] + width + 2, xy[1] + height + 2], fill=background)
    d.text(xy, text, fill=color, font=font(size))

  return _draw(image, paint)


def text_strip(
  width: int, height: int, text: str, size: int = 12, color: Color = BLACK, background=WHITE
) -> np.ndarray:
  """A height x width strip of `background` with `text` at its left, vertically centred."""
  strip = np.empty([height, width, 3], np.uint8)
  strip[:] = background
  text_height = text_size(text, size)[1]
  return draw_text(strip, (3, max(0, (height - text_height) // 2)), text, color, size)


def wrap_text(text: str, width: int, size: int = 12) -> list[str]:
  """`text` broken at spaces into lines at most `width` pixels wide in `font(size)`.

  A word wider than `width` on its own stays one (too wide) line.
  """
  lines: list[str] = []
  for word in text.split(" "):
    candidate = f"{lines[-1]} {word}" if lines else word
    if lines and text_size(candidate, size)[0] <= width:
      lines[-1] = candidate
    else:
      lines.append(word)
  return lines or [""]


def text_block(
  width: int, line_height: int, text: str, size: int = 12, color: Color = BLACK
) -> np.ndarray:
  """`text` wrapped to `width` (wrap_text), one strip of `line_height` pixels per line."""
  lines = wrap_text(text, width - 6, size)
  return vstack([text_strip(width, line_height, line, size, color) for line in lines])


def jet(values: np.ndarray) -> np.ndarray:
  """The 'jet' colour map (blue, cyan, yellow, red) of values in [0, 1], as RGB uint8 [..., 3]."""
  v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
  centres = np.array([0.75, 0.5, 0.25], np.float32)  # where red, green, blue peak
  rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)
  return np.round(rgb * 255.0).astype(np.uint8)


def colour_bar(
  height: int, width: int = 12, labels: tuple[str, str] = ("high", "low"), size: int = 11
) -> np.ndarray:
  """A vertical jet colour bar (top: 1, bottom: 0) with `labels` beside its two ends.

  Returns:
    RGB uint8 [height, width + 4 + label width, 3]: the bar at x < width, its
    top row jet(1), its bottom row jet(0), on white.
  """
  values = np.linspace(1.0, 0.0, max(2, height), dtype=np.float32)[:height]
  bar = np.repeat(jet(values)[:, None, :], width, axis=1)
  text_width = max(text_size(label, size)[0] for label in labels) + 2
  out = pad(bar, height, width + 4 + text_width)
  out = draw_text(out, (width + 4, 0), labels[0], BLACK, size)
  return draw_text(
    out, (width + 4, max(0, height - text_size(labels[1], size)[1] - 2)), labels[1], BLACK, size
  )


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """A heat map blended over `image`: (1 - a) * image + a * jet(heat), a = alpha * heat.

  The heat map (any [h, w] float array, e.g. an attention map at the
  network's stride) is resized bilinearly to the image size and scaled to
  [0, 1] by its min and max (a constant map becomes 0); the blending weight
  grows with the heat, so cold regions keep the image's pixels.

  Args:
    image: RGB uint8 [H, W, 3].
    heat: float [h, w] (a trailing dimension of 1 is dropped).
    alpha: blending weight of the hottest pixels, in [0, 1].

  Returns:
    RGB uint8 [H, W, 3].

  Raises:
    ValueError: a heat map that is not 2-D or not finite, or alpha outside [0, 1].
  """
  image = check_image(image)
  heat = np.asarray(heat, np.float32)
  if heat.ndim == 3 and heat.shape[-1] == 1:
    heat = heat[..., 0]
  if heat.ndim != 2 or heat.size == 0:
    raise ValueError(f"heat map must be [h, w], got shape {heat.shape}")
  if not np.isfinite(heat).all():
    raise ValueError("heat map holds NaN or inf")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  height, width = image.shape[:2]
  resized = np.asarray(Image.fromarray(heat).resize((width, height), Image.Resampling.BILINEAR))
  low, high = float(resized.min()), float(resized.max())
  unit = (resized - low) / (high - low) if high > low else np.zeros_like(resized)
  weight = (alpha * unit)[..., None]
  blended = (1.0 - weight) * image.astype(np.float32) + weight * jet(unit).astype(np.float32)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray, colors: int = 0, keep: np.ndarray | None = None) -> bytes:
  """PNG bytes of `image` (zlib level 9, optimised).

  Args:
    image: RGB uint8 [H, W, 3].
    colors: if > 0, the image is first reduced to a palette of at most this
      many colours (about 3x smaller files for photos; exact for drawings
      with few colours).
    keep: with `colors`, RGB uint8 [K, 3] colours the palette holds besides
      the `colors - K` chosen from the image (e.g. a colour bar's ramp, which
      a palette fitted to photos would band); at most 256 in all.
  """
  pil = Image.fromarray(check_image(image))
  if colors and keep is not None:
    keep = np.asarray(keep, np.uint8).reshape(-1, 3)
    fitted = pil.quantize(
      colors=int(colors) - len(keep), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    used = len(fitted.getcolors(256) or ())
    palette = fitted.getpalette()[: 3 * used] + keep.ravel().tolist()
    target = Image.new("P", (1, 1))
    target.putpalette(palette)
    pil = pil.quantize(palette=target, dither=Image.Dither.NONE)
  elif colors:
    pil = pil.quantize(
      colors=int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
  buffer = io.BytesIO()
  pil.save(buffer, format="PNG", optimize=True, compress_level=9)
  return buffer.getvalue()


def save_png(
  path: str | os.PathLike, image: np.ndarray, colors: int = 0, keep: np.ndarray | None = None
) -> str:
  """Writes `image` as a PNG at `path` atomically (see `encode_png`); returns the path.

  Raises:
    IOError: naming `path`, if it cannot be written.
  """
  files.atomic_write_bytes(path, encode_png(image, colors, keep))
  return os.fspath(path)
