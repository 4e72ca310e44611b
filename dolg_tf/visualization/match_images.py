"""Match images: two images' local feature matches after geometric verification.

`match_image` draws two images side by side (a left, b right) under a
header "N inliers / M tentative matches" (optionally wrapped onto more lines
when the images are narrower than it); every keypoint is a small dot
(`KEYPOINT_COLOR`), tentative matches that RANSAC rejected are lines of
`OUTLIER_COLOR` (at most `max_outliers` of them), its inliers lines of
`INLIER_COLOR` drawn on top. `verify_pair` computes both sets with
geometric_verification.verify (the matching and RANSAC of geometric verification, with a
GeometricVerificationConfig); `match_picture` does both for a `MatchPair` of
files, enlarging small images to `READABLE_SIDE` and wrapping the title.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from dolg_tf.data import ground_truth
from dolg_tf.io import feature_io, image_loading
from dolg_tf.retrieval import geometric_verification
from dolg_tf.visualization import drawing

INLIER_COLOR = (0, 230, 0)
OUTLIER_COLOR = (255, 60, 60)
KEYPOINT_COLOR = (255, 215, 0)
# Layout: a header strip (one MATCH_HEADER_HEIGHT line per line of title), then a | gap | b.
MATCH_HEADER_HEIGHT = 20
MATCH_GAP = 8
FONT_SIZE = 12
# Longest side small images are enlarged to in reports (benchmark images may be 128 px).
READABLE_SIDE = 320
# PNG palette of match images (drawing.encode_png): the photos' colours and, exactly, the marks'.
PNG_COLORS = 256
MARK_COLORS = (INLIER_COLOR, OUTLIER_COLOR, KEYPOINT_COLOR)


@dataclasses.dataclass
class PairVerification:
  """`verify_pair`'s outcome: tentative matches [M, 2] and the bool inlier mask [M]."""

  matches: np.ndarray
  inliers: np.ndarray

  @property
  def num_inliers(self) -> int:
    return int(np.count_nonzero(self.inliers))


def verify_pair(
  features_a: feature_io.LocalFeatures,
  features_b: feature_io.LocalFeatures,
  config: geometric_verification.GeometricVerificationConfig | None = None,
) -> PairVerification:
  """Matches two images' local features and fits RANSAC as geometric verification does."""
  config = config or geometric_verification.GeometricVerificationConfig()
  matches, result = geometric_verification.verify(features_a, features_b, **config.verify_kwargs())
  return PairVerification(matches, result.mask)


def _checked_matches(matches, inliers, locations_a, locations_b):
  """(matches int [M, 2], inliers bool [M], locations_a, locations_b float [N, 2]), checked."""
  matches = np.asarray(matches, np.int64).reshape(-1, 2)
  inliers = np.asarray(inliers, bool).reshape(-1)
  if len(inliers) != len(matches):
    raise ValueError(f"{len(matches)} matches but an inlier mask of {len(inliers)}")
  locations_a = np.asarray(locations_a, np.float64).reshape(-1, 2)
  locations_b = np.asarray(locations_b, np.float64).reshape(-1, 2)
  if len(matches) and (
    matches.min() < 0
    or matches[:, 0].max() >= len(locations_a)
    or matches[:, 1].max() >= len(locations_b)
  ):
    raise ValueError("match rows outside the keypoint arrays")
  return matches, inliers, locations_a, locations_b


def _scaled(image: np.ndarray, max_side: int, min_side: int) -> tuple[np.ndarray, float]:
  """`image` shrunk to `max_side` or enlarged to `min_side` (each if > 0), and the scale."""
  if max_side > 0:
    image, scale = drawing.fit(image, max_side)
  else:
    image, scale = drawing.check_image(image), 1.0
  longest = max(image.shape[:2])
  if 0 < longest < min_side:
    factor = min_side / longest
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    image, scale = drawing.resize(image, *size), scale * factor
  return image, scale


def match_image(
  image_a: np.ndarray,
  image_b: np.ndarray,
  locations_a: np.ndarray,
  locations_b: np.ndarray,
  matches: np.ndarray,
  inliers: np.ndarray,
  max_side: int = 0,
  title: str = "",
  max_outliers: int = 40,
  min_side: int = 0,
  wrap_title: bool = False,
) -> np.ndarray:
  """DELF-style match picture: a and b side by side, keypoints, matches, inliers on top.

  Layout: a header strip of MATCH_HEADER_HEIGHT pixels (with `wrap_title`,
  one per line of the title wrapped to the picture's width), then image a at
  x = 0 and image b at x = width(a) + MATCH_GAP (both top-aligned).

  Args:
    image_a / image_b: RGB uint8 images the keypoints were found in.
    locations_a / locations_b: float [Na, 2] / [Nb, 2] keypoints, (y, x) pixels
      of those images (DELF's order).
    matches: int [M, 2] (row of a, row of b).
    inliers: bool [M], the RANSAC inliers among the matches.
    max_side: if > 0, each image is first shrunk to this longest side (the
      keypoints follow).
    title: header text; default "<inliers> inliers / <matches> tentative matches".
    max_outliers: rejected matches drawn at most (evenly spread over them, so
      hundreds of them do not hide the inliers; the header says so); < 0: all.
    min_side: if > 0, an image whose longest side is shorter is enlarged to it.
    wrap_title: break a title wider than the picture onto more header lines
      (else it is cut at the right edge).

  Returns:
    RGB uint8 [header + max(Ha, Hb), Wa + MATCH_GAP + Wb, 3].

  Raises:
    ValueError: matches and inliers of different lengths, or match rows
      outside the keypoint arrays.
  """
  matches, inliers, locations_a, locations_b = _checked_matches(
    matches, inliers, locations_a, locations_b
  )
  image_a, scale_a = _scaled(image_a, max_side, min_side)
  image_b, scale_b = _scaled(image_b, max_side, min_side)
  canvas = drawing.hstack([image_a, image_b], gap=MATCH_GAP)
  text = title or f"{int(inliers.sum())} inliers / {len(matches)} tentative matches"
  num_outliers = int(np.count_nonzero(~inliers))
  if 0 <= max_outliers < num_outliers:
    text += f" ({max_outliers} of {num_outliers} rejected drawn)"
  if wrap_title:
    header = drawing.text_block(canvas.shape[1], MATCH_HEADER_HEIGHT, text, FONT_SIZE)
  else:
    header = drawing.text_strip(canvas.shape[1], MATCH_HEADER_HEIGHT, text, FONT_SIZE)
  canvas = drawing.vstack([header, canvas])
  top = header.shape[0]
  # (y, x) -> canvas (x, y).
  offset_b = image_a.shape[1] + MATCH_GAP
  points_a = locations_a[:, ::-1] * scale_a + [0, top]
  points_b = locations_b[:, ::-1] * scale_b + [offset_b, top]
  canvas = drawing.draw_points(canvas, np.concatenate([points_a, points_b]), KEYPOINT_COLOR, 1.0)
  segments = np.concatenate([points_a[matches[:, 0]], points_b[matches[:, 1]]], axis=1)
  outliers = segments[~inliers]
  if 0 <= max_outliers < len(outliers):
    outliers = outliers[np.linspace(0, len(outliers) - 1, max_outliers).round().astype(int)]
  canvas = drawing.draw_lines(canvas, outliers, OUTLIER_COLOR, 1)
  canvas = drawing.draw_lines(canvas, segments[inliers], INLIER_COLOR, 1)
  ends = np.concatenate([segments[inliers, :2], segments[inliers, 2:]])
  return drawing.draw_points(canvas, ends, INLIER_COLOR, 1.5)


@dataclasses.dataclass(frozen=True)
class MatchPair:
  """Two images and their local feature files; `box_a` crops image a (a cropped query)."""

  name_a: str
  image_a: str
  features_a: str
  name_b: str
  image_b: str
  features_b: str
  box_a: tuple[float, ...] | None = None


def match_picture(
  pair: MatchPair,
  config: geometric_verification.GeometricVerificationConfig | None = None,
  max_side: int = 512,
  min_side: int = READABLE_SIDE,
) -> tuple[np.ndarray, int]:
  """The match image of a pair (match_image, small images enlarged) and its inlier count.

  Raises:
    FileNotFoundError / IOError / ValueError: an unreadable image or feature file (named).
  """
  features_a = feature_io.read_from_file(pair.features_a)
  features_b = feature_io.read_from_file(pair.features_b)
  image_a = image_loading.load_image(pair.image_a)
  if pair.box_a is not None:
    image_a = image_loading.crop_box(image_a, pair.box_a)
  image_b = image_loading.load_image(pair.image_b)
  verified = verify_pair(features_a, features_b, config)
  picture = match_image(
    image_a,
    image_b,
    features_a.locations,
    features_b.locations,
    verified.matches,
    verified.inliers,
    max_side=max_side,
    title=f"{pair.name_a} - {pair.name_b}: {verified.num_inliers} inliers / "
    f"{len(verified.matches)} tentative matches",
    min_side=min_side,
    wrap_title=True,
  )
  return picture, verified.num_inliers


def best_positive_pairs(
  gt: ground_truth.RevisitedGroundTruth, ranks: np.ndarray, queries: Sequence[int]
) -> list[tuple[int, int]]:
  """(query, database index) of each query's best-ranked easy or hard image (if it has one)."""
  pairs = []
  for q in queries:
    positives = set(np.concatenate([gt.gnd[q]["easy"], gt.gnd[q]["hard"]]).tolist())
    hit = next((int(i) for i in ranks[q] if int(i) in positives), None)
    if hit is not None:
      pairs.append((q, hit))
  return pairs
