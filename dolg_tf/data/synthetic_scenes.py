"""Synthetic landmarks: procedural scenes and their random views (no TensorFlow).

Each class is a "landmark": a fixed scene made of a background (sky/ground
split with a wave texture) and 6-10 patterned shapes (polygons, ellipses,
stripe patches, checker patches, ring targets) at class-specific positions.
A view is the scene seen through a random perspective camera (scale, crop,
rotation, perspective), then degraded with colour jitter, shading, blur and
noise. The hue of every view is rotated at random over the full circle and the
canonical scenes share the same mean luminance, contrast and saturation, so
the mean colour of a view says little about its class: a model has to use the
shapes and their layout.

Everything is deterministic given the seed: scene `i` depends only on
(seed, i), a view only on the generator it is given (`view_rng`). The
training set and benchmark writers are in synthetic.py.
"""

import dataclasses
import functools
import math

import cv2
import numpy as np

# The scene content lives in [0, 1]^2 (scene units); the canonical canvas
# extends CANVAS_MARGIN beyond it on each side with background only.
CANVAS_MARGIN = 0.5
ELEMENT_KINDS = ("polygon", "ellipse", "stripes", "checker", "rings")
# Canonical scenes are normalised to these statistics (content region).
_TARGET_LUMA_MEAN = 0.47
_TARGET_LUMA_STD = 0.2
_TARGET_SATURATION = 0.45
# Random streams (one per use) so that the sets never share views.
SCENE_STREAM = 1
TRAIN_STREAM = 2
QUERY_STREAM = 3
DB_STREAM = 4
ORDER_STREAM = 5


@dataclasses.dataclass(frozen=True)
class Element:
  """One shape of a scene (all lengths in scene units, colours RGB in [0, 1])."""

  kind: str
  center: tuple[float, float]
  size: float
  aspect: float
  angle: float
  color: tuple[float, float, float]
  color2: tuple[float, float, float]
  period: float
  vertices: tuple[tuple[float, float], ...] = ()
  outline: bool = False


@dataclasses.dataclass(frozen=True)
class Scene:
  """A landmark class: background parameters and shapes.

  Attributes:
    class_id: the class index.
    sky: two colours of the vertical sky gradient.
    ground: two colours mixed by the ground texture.
    horizon: (height in [0, 1], slope) of the sky/ground boundary.
    waves: ground texture as (fx, fy, phase) sinusoids, cycles per unit.
    elements: the shapes, drawn in order.
  """

  class_id: int
  sky: tuple[tuple[float, float, float], tuple[float, float, float]]
  ground: tuple[tuple[float, float, float], tuple[float, float, float]]
  horizon: tuple[float, float]
  waves: tuple[tuple[float, float, float], ...]
  elements: tuple[Element, ...]


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """Ranges of the random camera and photometric changes of a view.

  Attributes:
    scale_ranges: side of the viewed square in scene units (1 = whole
      scene); one (low, high) range is picked at random, then a value in it.
    aspect_range: anisotropic stretch (log-uniform).
    max_shift: offset of the view centre from the scene centre.
    max_rotation_deg: in-plane rotation.
    max_perspective: corner jitter, as a fraction of the side.
    max_hue_shift_deg: hue rotation (180 = any hue).
    saturation_range: saturation multiplier.
    brightness_range: brightness multiplier.
    contrast_range: contrast multiplier around the mean.
    max_channel_gain: per-channel gain deviation (white balance).
    grayscale_prob: probability of a grayscale view.
    max_shading: strength of a linear illumination gradient.
    blur_sigma_range: Gaussian blur sigma in output pixels (< 0.3: none).
    noise_std_range: Gaussian noise std in 0..255 units.
  """

  scale_ranges: tuple[tuple[float, float], ...] = ((0.45, 1.15),)
  aspect_range: tuple[float, float] = (0.8, 1.25)
  max_shift: float = 0.15
  max_rotation_deg: float = 12.0
  max_perspective: float = 0.1
  max_hue_shift_deg: float = 180.0
  saturation_range: tuple[float, float] = (0.4, 1.5)
  brightness_range: tuple[float, float] = (0.65, 1.35)
  contrast_range: tuple[float, float] = (0.6, 1.4)
  max_channel_gain: float = 0.12
  grayscale_prob: float = 0.1
  max_shading: float = 0.3
  blur_sigma_range: tuple[float, float] = (0.0, 1.0)
  noise_std_range: tuple[float, float] = (0.0, 6.0)


# Training views: broad changes.
TRAIN_VIEW = ViewParams()
# Benchmark queries: nearly frontal, most of the scene.
QUERY_VIEW = ViewParams(
  scale_ranges=((0.8, 1.0),),
  aspect_range=(0.95, 1.05),
  max_shift=0.05,
  max_rotation_deg=3.0,
  max_perspective=0.03,
  blur_sigma_range=(0.0, 0.5),
  noise_std_range=(0.0, 3.0),
)
# Database, 'easy': mild view change.
EASY_VIEW = ViewParams(
  scale_ranges=((0.75, 1.05),),
  aspect_range=(0.9, 1.1),
  max_shift=0.08,
  max_rotation_deg=5.0,
  max_perspective=0.05,
  blur_sigma_range=(0.0, 0.6),
  noise_std_range=(0.0, 4.0),
)
# Database, 'hard': strong zoom in or out, rotation, perspective, blur.
HARD_VIEW = ViewParams(
  scale_ranges=((0.35, 0.55), (1.2, 1.45)),
  aspect_range=(0.75, 1.33),
  max_shift=0.2,
  max_rotation_deg=25.0,
  max_perspective=0.2,
  blur_sigma_range=(0.3, 1.5),
  noise_std_range=(2.0, 10.0),
)
# Database, 'junk': tiny crops or extreme perspective; the landmark is barely there.
JUNK_VIEW = ViewParams(
  scale_ranges=((0.1, 0.18),),
  aspect_range=(0.6, 1.6),
  max_shift=0.35,
  max_rotation_deg=60.0,
  max_perspective=0.3,
  blur_sigma_range=(0.5, 2.0),
  noise_std_range=(4.0, 14.0),
)


def _random_color(rng: np.random.Generator) -> tuple[float, float, float]:
  hsv = np.array([[[rng.uniform(0, 360), rng.uniform(0.25, 1.0), rng.uniform(0.15, 1.0)]]])
  rgb = cv2.cvtColor(hsv.astype(np.float32), cv2.COLOR_HSV2RGB)[0, 0]
  return tuple(float(x) for x in rgb)


def make_scene(class_id: int, seed: int) -> Scene:
  """The scene of class `class_id`; depends only on (seed, class_id)."""
  if seed < 0 or class_id < 0:
    raise ValueError(f"seed and class_id must be >= 0, got {seed}, {class_id}")
  rng = np.random.default_rng([seed, SCENE_STREAM, class_id])
  waves = tuple(
    (float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)), float(rng.uniform(0, 2 * math.pi)))
    for _ in range(3)
  )
  elements = []
  for _ in range(int(rng.integers(6, 11))):
    kind = ELEMENT_KINDS[int(rng.integers(len(ELEMENT_KINDS)))]
    size = float(rng.uniform(0.06, 0.2))
    vertices = ()
    if kind == "polygon":
      n = int(rng.integers(3, 9))
      angles = np.sort(rng.uniform(0, 2 * math.pi, n))
      radii = rng.uniform(0.45, 1.0, n)
      vertices = tuple((float(a), float(r)) for a, r in zip(angles, radii))
    elements.append(
      Element(
        kind=kind,
        center=(float(rng.uniform(0.12, 0.88)), float(rng.uniform(0.12, 0.88))),
        size=size,
        aspect=float(np.exp(rng.uniform(-0.6, 0.6))),
        angle=float(rng.uniform(0, math.pi)),
        color=_random_color(rng),
        color2=_random_color(rng),
        period=float(size * rng.uniform(0.25, 0.6)),
        vertices=vertices,
        outline=bool(rng.random() < 0.5),
      )
    )
  return Scene(
    class_id=class_id,
    sky=(_random_color(rng), _random_color(rng)),
    ground=(_random_color(rng), _random_color(rng)),
    horizon=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(-0.25, 0.25))),
    waves=waves,
    elements=tuple(elements),
  )


def make_scenes(num_classes: int, seed: int) -> list[Scene]:
  """Scenes 0..num_classes-1; scene i is the same for any num_classes > i."""
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  return [make_scene(c, seed) for c in range(num_classes)]


def _grid(shape: tuple[int, int], px_per_unit: float) -> tuple[np.ndarray, np.ndarray]:
  """Scene coordinates (u, v) of the pixel centres of the canonical canvas."""
  h, w = shape
  u = (np.arange(w, dtype=np.float32) + 0.5) / px_per_unit - CANVAS_MARGIN
  v = (np.arange(h, dtype=np.float32) + 0.5) / px_per_unit - CANVAS_MARGIN
  return np.meshgrid(u, v)


def _to_px(points: np.ndarray, px_per_unit: float) -> np.ndarray:
  return (np.asarray(points) + CANVAS_MARGIN) * px_per_unit


def _element_alpha(el: Element, shape: tuple[int, int], px_per_unit: float) -> np.ndarray:
  """Anti-aliased coverage mask of an element's outline shape, float32 [0, 1]."""
  mask = np.zeros(shape, np.uint8)
  shift = 4  # sub-pixel precision of cv2 drawing
  scale = float(1 << shift)
  cx, cy = el.center
  ca, sa = math.cos(el.angle), math.sin(el.angle)
  rx, ry = el.size * math.sqrt(el.aspect), el.size / math.sqrt(el.aspect)
  if el.kind == "polygon":
    pts = [(r * rx * math.cos(a), r * ry * math.sin(a)) for a, r in el.vertices]
    pts = np.array([(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts])
    polygon = np.round(_to_px(pts, px_per_unit) * scale).astype(np.int32)
    cv2.fillPoly(mask, [polygon], 255, cv2.LINE_AA, shift)
  elif el.kind in ("ellipse", "rings"):
    center = tuple(int(round(c * scale)) for c in _to_px((cx, cy), px_per_unit))
    axes = (int(round(rx * px_per_unit * scale)), int(round(ry * px_per_unit * scale)))
    cv2.ellipse(mask, center, axes, math.degrees(el.angle), 0, 360, 255, -1, cv2.LINE_AA, shift)
  else:  # stripes, checker: rotated rectangle
    corners = np.array([(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)])
    pts = np.array([(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in corners])
    polygon = np.round(_to_px(pts, px_per_unit) * scale).astype(np.int32)
    cv2.fillPoly(mask, [polygon], 255, cv2.LINE_AA, shift)
  return mask.astype(np.float32) / 255.0


def _element_fill(el: Element, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Per-pixel colour of an element's pattern, float32 [H, W, 3]."""
  c1, c2 = np.array(el.color, np.float32), np.array(el.color2, np.float32)
  du, dv = u - el.center[0], v - el.center[1]
  ca, sa = math.cos(el.angle), math.sin(el.angle)
  x, y = du * ca + dv * sa, -du * sa + dv * ca
  if el.kind == "stripes":
    t = np.floor(x / el.period) % 2
  elif el.kind == "checker":
    t = (np.floor(x / el.period) + np.floor(y / el.period)) % 2
  elif el.kind == "rings":
    t = np.floor(np.sqrt(x * x + y * y) / (0.6 * el.period)) % 2
  else:  # polygon, ellipse: two-tone split along a rotated line
    t = (y > 0.3 * el.size).astype(np.float32)
  t = t.astype(np.float32)[..., None]
  return c1 * (1 - t) + c2 * t


def _normalise(image: np.ndarray, px_per_unit: float) -> np.ndarray:
  """Gives every canonical scene the same luminance mean/std and mean saturation."""
  lo = int(round(CANVAS_MARGIN * px_per_unit))
  hi = int(round((1 + CANVAS_MARGIN) * px_per_unit))
  content = image[lo:hi, lo:hi]
  luma = content @ np.array([0.299, 0.587, 0.114], np.float32)
  gain = _TARGET_LUMA_STD / max(float(luma.std()), 1e-3)
  image = np.clip((image - float(luma.mean())) * gain + _TARGET_LUMA_MEAN, 0, 1)
  hsv = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2HSV)
  mean_s = float(hsv[lo:hi, lo:hi, 1].mean())
  hsv[..., 1] = np.clip(hsv[..., 1] * (_TARGET_SATURATION / max(mean_s, 1e-3)), 0, 1)
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@functools.lru_cache(maxsize=4)
def render_canonical(scene: Scene, px_per_unit: int) -> np.ndarray:
  """The scene seen from the front, uint8 RGB, covering [-m, 1 + m]^2 units.

  Args:
    scene: the scene.
    px_per_unit: pixels per scene unit.

  Returns:
    uint8 [N, N, 3] with N = round((1 + 2 * CANVAS_MARGIN) * px_per_unit).
  """
  n = int(round((1 + 2 * CANVAS_MARGIN) * px_per_unit))
  u, v = _grid((n, n), px_per_unit)
  level, slope = scene.horizon
  sky = (v < level + slope * (u - 0.5)).astype(np.float32)[..., None]
  grad = np.clip((v + CANVAS_MARGIN) / (level + 2 * CANVAS_MARGIN), 0, 1)[..., None]
  sky0, sky1 = (np.array(c, np.float32) for c in scene.sky)
  sky_rgb = sky0 + (sky1 - sky0) * grad
  field = sum(np.sin(2 * math.pi * (fx * u + fy * v) + ph) for fx, fy, ph in scene.waves)
  t = (0.5 + field / (2 * len(scene.waves))).astype(np.float32)[..., None]
  ground0, ground1 = (np.array(c, np.float32) for c in scene.ground)
  image = sky * sky_rgb + (1 - sky) * (ground0 + (ground1 - ground0) * t)
  kernel = np.ones((3, 3), np.uint8)
  for el in scene.elements:
    alpha = _element_alpha(el, (n, n), px_per_unit)
    x, y, w, h = cv2.boundingRect((alpha > 0).astype(np.uint8))
    if w == 0 or h == 0:
      continue
    x0, y0 = max(x - 1, 0), max(y - 1, 0)
    box = (slice(y0, min(y + h + 1, n)), slice(x0, min(x + w + 1, n)))
    a = alpha[box][..., None]
    image[box] = image[box] * (1 - a) + _element_fill(el, u[box], v[box]) * a
    if el.outline:
      edge = cv2.morphologyEx(alpha[box], cv2.MORPH_GRADIENT, kernel)[..., None] * 0.85
      dark = np.array(el.color2, np.float32) * 0.3
      image[box] = image[box] * (1 - edge) + dark * edge
  image = _normalise(image, px_per_unit)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
  return float(rng.uniform(lo_hi[0], lo_hi[1])) if lo_hi[1] > lo_hi[0] else float(lo_hi[0])


def _view_quad(rng: np.random.Generator, params: ViewParams) -> np.ndarray:
  """Corners (TL, TR, BR, BL) of the viewed region, in scene units, [4, 2]."""
  scale_range = params.scale_ranges[int(rng.integers(len(params.scale_ranges)))]
  side = _uniform(rng, scale_range)
  aspect = math.exp(
    _uniform(rng, (math.log(params.aspect_range[0]), math.log(params.aspect_range[1])))
  )
  hx, hy = 0.5 * side * math.sqrt(aspect), 0.5 * side / math.sqrt(aspect)
  center = 0.5 + rng.uniform(-params.max_shift, params.max_shift, 2)
  theta = math.radians(rng.uniform(-params.max_rotation_deg, params.max_rotation_deg))
  rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
  corners = np.array([(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)]) @ rot.T + center
  jitter = rng.uniform(-params.max_perspective, params.max_perspective, (4, 2)) * side
  return corners + jitter


def _photometric(image: np.ndarray, rng: np.random.Generator, params: ViewParams) -> np.ndarray:
  """Colour jitter, shading, blur and noise on float32 RGB [0, 1]; returns uint8."""
  size = image.shape[0]
  hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
  hue_shift = rng.uniform(-params.max_hue_shift_deg, params.max_hue_shift_deg)
  hsv[..., 0] = np.mod(hsv[..., 0] + hue_shift, 360.0)
  hsv[..., 1] = np.clip(hsv[..., 1] * _uniform(rng, params.saturation_range), 0, 1)
  image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  gains = 1 + rng.uniform(-params.max_channel_gain, params.max_channel_gain, 3)
  image = image * gains.astype(np.float32) * _uniform(rng, params.brightness_range)
  mean = float(image.mean())
  image = (image - mean) * _uniform(rng, params.contrast_range) + mean
  if rng.random() < params.grayscale_prob:
    gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
    image = np.repeat(gray[..., None], 3, axis=2)
  angle = rng.uniform(0, 2 * math.pi)
  ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
  shading = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
  image = image * (1 + rng.uniform(0, params.max_shading) * shading)[..., None]
  sigma = _uniform(rng, params.blur_sigma_range)
  if sigma >= 0.3:
    image = cv2.GaussianBlur(image, (0, 0), sigma)
  noise_std = _uniform(rng, params.noise_std_range) / 255.0
  # Luminance noise (one value per pixel for all channels).
  image = image + noise_std * rng.standard_normal((size, size, 1), dtype=np.float32)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def render_view(
  scene: Scene, rng: np.random.Generator, size: int, params: ViewParams = TRAIN_VIEW
) -> np.ndarray:
  """Renders one random view of `scene`.

  Args:
    scene: the scene.
    rng: source of all the view's randomness (same state, same view).
    size: output side in pixels.
    params: ranges of the view changes (TRAIN_VIEW, QUERY_VIEW, EASY_VIEW,
      HARD_VIEW, JUNK_VIEW or your own).

  Returns:
    uint8 RGB [size, size, 3].
  """
  if size < 8:
    raise ValueError(f"size must be >= 8, got {size}")
  px_per_unit = (3 * size) // 2
  canonical = render_canonical(scene, px_per_unit)
  quad = _to_px(_view_quad(rng, params), px_per_unit).astype(np.float32)
  # Warp at twice the output size, then area-downsample (anti-aliasing).
  big = 2 * size
  target = np.array([(0, 0), (big, 0), (big, big), (0, big)], np.float32)
  matrix = cv2.getPerspectiveTransform(quad, target)
  warped = cv2.warpPerspective(
    canonical, matrix, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
  )
  small = cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)
  return _photometric(small.astype(np.float32) / 255.0, rng, params)


def view_rng(seed: int, stream: int, class_id: int, index: int) -> np.random.Generator:
  """The generator of view `index` of class `class_id` in random stream `stream`."""
  return np.random.default_rng([seed, stream, class_id, index])
