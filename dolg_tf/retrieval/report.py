"""Results people can look at: attention maps, match images, ranked lists, plots, one HTML page.

Pictures (RGB uint8 arrays, written as PNG files):

* `attention_overlay`: a network's attention map (DOLG's self-attention,
  DELG's keypoint attention) as a heat map blended over the image.
* `match_image`: two images side by side (a left, b right) under a header
  line "N inliers / M tentative matches"; every keypoint as a small dot
  (`KEYPOINT_COLOR`), tentative matches that RANSAC rejected as lines of
  `OUTLIER_COLOR` (at most `max_outliers` of them), its inliers as lines of
  `INLIER_COLOR` drawn on top.
  `verify_pair` computes both sets with rerank.verify (the matching and RANSAC
  of geometric verification, with a GeometricVerificationConfig).
* `ranked_list_image`: one query and its top-k database images, thumbnails
  framed by their ground-truth label (`LABEL_COLORS`: easy green, hard blue,
  junk grey, negative red), the query's box drawn on it (`BOX_COLOR`), its AP
  per protocol in the caption.
* `ap_plot_png` / `pr_plot_png`: per-query AP bars and precision-recall
  curves per protocol (matplotlib's Agg canvas, no pyplot state).

The page: `ReportBuilder` writes PNGs into one folder and an `index.html`
beside them that links them by relative name, with inline CSS and no external
URL, so the folder can be copied or opened anywhere. `write_report` builds the
folder atomically (files.atomic_write_dir: a complete report or the old one);
`write_retrieval_report` is what `perform_retrieval --report_dir` writes.
Images of a ground truth are `<images_dir>/<name><image_extension>` (as
extraction's --gnd_path reads them).
"""

import dataclasses
import functools
import html
import io
import os
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib.figure import Figure

from dolg_tf.data import ground_truth
from dolg_tf.io import descriptor_reading, feature_io, image_loading
from dolg_tf.retrieval import metrics, rerank
from dolg_tf.utils import drawing, untrusted
from dolg_tf.utils import files as file_utils

INDEX_HTML = "index.html"
# Ground-truth labels of a database image for one query, and their frame colours.
LABELS = ("easy", "hard", "junk", "negative")
LABEL_COLORS = {
  "easy": (44, 160, 44),
  "hard": (31, 119, 180),
  "junk": (150, 150, 150),
  "negative": (214, 39, 40),
}
BOX_COLOR = (255, 215, 0)
QUERY_FRAME_COLOR = (0, 0, 0)
INLIER_COLOR = (0, 230, 0)
OUTLIER_COLOR = (255, 60, 60)
KEYPOINT_COLOR = (255, 215, 0)
PROTOCOL_COLORS = {"easy": "#2ca02c", "medium": "#ff7f0e", "hard": "#d62728"}

# Match image layout: a header strip, then a | gap | b.
MATCH_HEADER_HEIGHT = 20
MATCH_GAP = 8
# Ranked list layout: a caption strip, then the query tile, a wider gap, the
# result tiles, and a strip of rank numbers under them (see ranked_tile_box).
CAPTION_HEIGHT = 20
FOOTER_HEIGHT = 14
QUERY_GAP = 14
TILE_GAP = 4
FONT_SIZE = 12
# Palette of the ranked-list PNGs (drawing.encode_png): a third of the full-colour size.
RANKED_LIST_COLORS = 256


def gnd_image_path(images_dir: str, name: str, image_extension: str = ".jpg") -> str:
  """The image file of a ground-truth name: `<images_dir>/<name><image_extension>`.

  Raises:
    ValueError: naming `name`, if the path leaves `images_dir` (an absolute
      name or `..`): ground-truth names are data, never paths elsewhere.
  """
  path = os.path.join(images_dir, name + image_extension)
  if not untrusted.is_inside(path, images_dir):
    raise ValueError(
      f"ground-truth image name {name!r}: resolves outside the images folder {images_dir}"
    )
  return path


def attention_overlay(image: np.ndarray, attention: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """An attention map ([h, w] or [h, w, 1], any stride) blended over `image` as a heat map.

  Returns:
    RGB uint8 with the image's size (drawing.heatmap_overlay).
  """
  return drawing.heatmap_overlay(image, np.asarray(attention, np.float32), alpha)


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
  config: rerank.GeometricVerificationConfig | None = None,
) -> PairVerification:
  """Matches two images' local features and fits RANSAC as geometric verification does."""
  config = config or rerank.GeometricVerificationConfig()
  matches, result = rerank.verify(features_a, features_b, **config.verify_kwargs())
  return PairVerification(matches, result.mask)


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
) -> np.ndarray:
  """DELF-style match picture: a and b side by side, keypoints, matches, inliers on top.

  Layout: a header strip of MATCH_HEADER_HEIGHT pixels, then image a at x = 0
  and image b at x = width(a) + MATCH_GAP (both top-aligned).

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

  Returns:
    RGB uint8 [MATCH_HEADER_HEIGHT + max(Ha, Hb), Wa + MATCH_GAP + Wb, 3].

  Raises:
    ValueError: matches and inliers of different lengths, or match rows
      outside the keypoint arrays.
  """
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
  scale_a = scale_b = 1.0
  if max_side > 0:
    image_a, scale_a = drawing.fit(image_a, max_side)
    image_b, scale_b = drawing.fit(image_b, max_side)
  canvas = drawing.hstack([image_a, image_b], gap=MATCH_GAP)
  text = title or f"{int(inliers.sum())} inliers / {len(matches)} tentative matches"
  num_outliers = int(np.count_nonzero(~inliers))
  if 0 <= max_outliers < num_outliers:
    text += f" ({max_outliers} of {num_outliers} rejected drawn)"
  header = drawing.text_strip(canvas.shape[1], MATCH_HEADER_HEIGHT, text, FONT_SIZE)
  canvas = drawing.vstack([header, canvas])
  # (y, x) -> canvas (x, y).
  offset_b = image_a.shape[1] + MATCH_GAP
  points_a = locations_a[:, ::-1] * scale_a + [0, MATCH_HEADER_HEIGHT]
  points_b = locations_b[:, ::-1] * scale_b + [offset_b, MATCH_HEADER_HEIGHT]
  canvas = drawing.draw_points(canvas, np.concatenate([points_a, points_b]), KEYPOINT_COLOR, 1.0)
  segments = np.concatenate([points_a[matches[:, 0]], points_b[matches[:, 1]]], axis=1)
  outliers = segments[~inliers]
  if 0 <= max_outliers < len(outliers):
    outliers = outliers[np.linspace(0, len(outliers) - 1, max_outliers).round().astype(int)]
  canvas = drawing.draw_lines(canvas, outliers, OUTLIER_COLOR, 1)
  canvas = drawing.draw_lines(canvas, segments[inliers], INLIER_COLOR, 1)
  ends = np.concatenate([segments[inliers, :2], segments[inliers, 2:]])
  return drawing.draw_points(canvas, ends, INLIER_COLOR, 1.5)


def gt_labels(entry: Mapping, ranking: Sequence[int]) -> list[str]:
  """'easy', 'hard', 'junk' or 'negative' for each database image of `ranking`.

  Args:
    entry: one query's gnd entry (index lists 'easy', 'hard', 'junk').
    ranking: database indices (distractors past the ground truth: 'negative').
  """
  sets = {
    label: set(np.asarray(entry.get(label, ()), np.int64).ravel().tolist()) for label in LABELS[:3]
  }
  return [next((k for k in LABELS[:3] if int(i) in sets[k]), "negative") for i in ranking]


def ranked_tile_box(position: int, thumb_size: int, border: int) -> tuple[int, int, int, int]:
  """(x1, y1, x2, y2), end exclusive, of tile `position` (0: the query, k: rank k) in a list."""
  tile = thumb_size + 2 * border
  x = 0 if position == 0 else tile + QUERY_GAP + (position - 1) * (tile + TILE_GAP)
  return x, CAPTION_HEIGHT, x + tile, CAPTION_HEIGHT + tile


def _legend(width: int, x: int) -> list[tuple[int, str, tuple]]:
  """(x, label, colour) of the legend entries from x on, or [] if they do not fit in `width`."""
  entries = []
  for label in LABELS:
    entries.append((x, label, LABEL_COLORS[label]))
    x += 12 + drawing.text_size(label, FONT_SIZE - 1)[0] + 8
  return entries if x <= width else []


def ranked_list_image(
  query_image: np.ndarray,
  result_images: Sequence[np.ndarray | None],
  labels: Sequence[str],
  query_box: Sequence[float] | None = None,
  caption: str = "",
  thumb_size: int = 96,
  border: int = 4,
  legend: bool = True,
) -> np.ndarray:
  """One query and its ranked results as a row of framed thumbnails.

  Layout (see `ranked_tile_box`): a caption strip (`caption`, then the colour
  legend if it fits), the query's tile framed in QUERY_FRAME_COLOR with its box
  in BOX_COLOR, then one tile per result framed in LABEL_COLORS[label], and
  rank numbers under the result tiles.

  Args:
    query_image: RGB uint8.
    result_images: RGB uint8 per rank; None draws an empty grey tile (e.g. a
      distractor without an image).
    labels: LABELS entry per rank.
    query_box: (x1, y1, x2, y2) in query-image pixels, or None.
    caption: e.g. the query name and its AP.
    thumb_size: thumbnail side (images are fitted into the square).
    border: frame width.
    legend: draw the label legend in the caption strip when it fits.

  Returns:
    RGB uint8 [CAPTION_HEIGHT + thumb + 2 * border + FOOTER_HEIGHT, width, 3].

  Raises:
    ValueError: labels and results of different lengths, or an unknown label.
  """
  if len(labels) != len(result_images):
    raise ValueError(f"{len(result_images)} results but {len(labels)} labels")
  unknown = sorted(set(labels) - set(LABELS))
  if unknown:
    raise ValueError(f"unknown label(s) {unknown}; expected {LABELS}")
  count = len(result_images)
  width = (
    ranked_tile_box(max(count, 0), thumb_size, border)[2] if count else thumb_size + 2 * border
  )
  tile = thumb_size + 2 * border
  canvas = np.full([CAPTION_HEIGHT + tile + FOOTER_HEIGHT, width, 3], 255, np.uint8)
  thumb, scale, (ox, oy) = drawing.thumbnail(query_image, thumb_size)
  if query_box is not None:
    x1, y1, x2, y2 = (float(v) for v in query_box)
    box = (ox + x1 * scale, oy + y1 * scale, ox + x2 * scale - 1, oy + y2 * scale - 1)
    thumb = drawing.draw_rectangle(thumb, box, BOX_COLOR, 2)
  tiles = [drawing.add_border(thumb, QUERY_FRAME_COLOR, border)]
  for image in result_images:
    if image is None:
      tiles.append(np.full([thumb_size, thumb_size, 3], 200, np.uint8))
    else:
      tiles.append(drawing.thumbnail(image, thumb_size)[0])
  for position, tile_image in enumerate(tiles):
    x1, y1, x2, y2 = ranked_tile_box(position, thumb_size, border)
    if position:
      tile_image = drawing.add_border(tile_image, LABEL_COLORS[labels[position - 1]], border)
    canvas[y1:y2, x1:x2] = tile_image
  canvas = drawing.draw_text(canvas, (3, 3), caption, drawing.BLACK, FONT_SIZE)
  footer_y = CAPTION_HEIGHT + tile + 1
  canvas = drawing.draw_text(canvas, (3, footer_y), "query", drawing.BLACK, FONT_SIZE - 1)
  for rank in range(1, count + 1):
    x1 = ranked_tile_box(rank, thumb_size, border)[0]
    canvas = drawing.draw_text(canvas, (x1 + 2, footer_y), str(rank), drawing.BLACK, FONT_SIZE - 1)
  if legend:
    start = drawing.text_size(caption, FONT_SIZE)[0] + 16 if caption else 3
    for x, label, color in _legend(width, start):
      canvas[6:16, x : x + 10] = color
      canvas = drawing.draw_text(canvas, (x + 12, 4), label, drawing.BLACK, FONT_SIZE - 1)
  return canvas


# --------------------------------------------------------------------------- plots


def _figure_png(figure: Figure, dpi: int = 80) -> bytes:
  backend_agg.FigureCanvasAgg(figure)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  return buffer.getvalue()


def ap_plot_png(results: Mapping[str, metrics.MapResult], query_names: Sequence[str]) -> bytes:
  """PNG bytes of per-query AP bars, one panel per protocol, mAP as a dashed line.

  Queries the protocol skips (no positives) are marked 'x' at 0.
  """
  protocols = [p for p in ground_truth.PROTOCOLS if p in results]
  count = len(query_names)
  figure = Figure(figsize=(min(24.0, max(6.0, 0.14 * count + 1.5)), 1.9 * len(protocols) + 0.6))
  axes = figure.subplots(len(protocols), 1, sharex=True, squeeze=False)[:, 0]
  positions = np.arange(count)
  for ax, protocol in zip(axes, protocols):
    result = results[protocol]
    aps = np.asarray(result.aps, np.float64)
    skipped = np.isnan(aps)
    ax.bar(positions, np.where(skipped, 0.0, 100 * aps), color=PROTOCOL_COLORS[protocol])
    if skipped.any():
      ax.plot(positions[skipped], np.zeros(skipped.sum()), "x", color="0.4", label="skipped")
      ax.legend(loc="upper right", fontsize=7)
    ax.axhline(100 * result.mean_ap, color="k", linestyle="--", linewidth=1)
    ax.set_ylim(0, 105)
    ax.set_ylabel("AP %")
    ax.set_title(f"{protocol.capitalize()}: mAP {100 * result.mean_ap:.2f}", fontsize=9)
  axes[-1].set_xticks(positions)
  axes[-1].set_xticklabels(query_names, rotation=90, fontsize=6 if count > 30 else 8)
  axes[-1].set_xlim(-0.6, count - 0.4)
  figure.tight_layout()
  return _figure_png(figure)


RECALL_GRID = np.linspace(0.0, 1.0, 101)


def interpolated_precision(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
  """Precision at RECALL_GRID: the best precision at any recall >= r (0 past the last)."""
  out = np.zeros_like(RECALL_GRID)
  best = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
  for i, r in enumerate(RECALL_GRID):
    reached = np.flatnonzero(np.asarray(recall) >= r - 1e-12)
    out[i] = best[reached[0]] if reached.size else 0.0
  return out


def pr_plot_png(
  ranks: Mapping[str, np.ndarray],
  gt: ground_truth.RevisitedGroundTruth,
  results: Mapping[str, metrics.MapResult] | None = None,
) -> bytes:
  """PNG bytes of precision-recall curves, one panel per protocol.

  Each query's curve (junk removed, metrics.precision_recall) is a thin grey
  line; the bold line is the mean interpolated precision over the queries
  with positives.

  Args:
    ranks: {protocol: int [Q, K]} rankings.
    gt: the ground truth.
    results: {protocol: MapResult} for the panel titles (mAP); optional.
  """
  protocols = [p for p in ground_truth.PROTOCOLS if p in ranks]
  figure = Figure(figsize=(3.2 * len(protocols), 3.2))
  axes = figure.subplots(1, len(protocols), sharey=True, squeeze=False)[0]
  for ax, protocol in zip(axes, protocols):
    protocol_gnd = ground_truth.protocol_ground_truth(gt, protocol)
    curves = []
    for q, entry in enumerate(protocol_gnd):
      if len(entry["ok"]) == 0:
        continue
      recall, precision = metrics.precision_recall(ranks[protocol][q], entry["ok"], entry["junk"])
      ax.plot(recall, precision, color="0.75", linewidth=0.6, drawstyle="steps-pre")
      # Without the (0, 1) start point: at recall 0 the best precision of a real hit.
      curves.append(interpolated_precision(recall[1:], precision[1:]))
    if curves:
      ax.plot(RECALL_GRID, np.mean(curves, axis=0), color=PROTOCOL_COLORS[protocol], linewidth=2)
    title = protocol.capitalize()
    if results and protocol in results:
      title += f": mAP {100 * results[protocol].mean_ap:.2f}"
    ax.set_title(f"{title} ({len(curves)} queries)", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("precision")
  figure.tight_layout()
  return _figure_png(figure)


# --------------------------------------------------------------------------- the page

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
nav a { margin-right: 1em; }
figure { display: inline-block; margin: 0.4em 0.8em 0.8em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; image-rendering: auto; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.3em 0 0.9em;
  vertical-align: middle; border: 1px solid #444; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; }
"""


def _safe_name(stem: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


def _hex(color) -> str:
  return "#" + "".join(f"{int(c):02x}" for c in color)


class ReportBuilder:
  """Collects sections of an HTML page while writing their PNGs into `folder`.

  builder = ReportBuilder(folder, "title")
  builder.section("Attention")
  builder.add_image("attention_q0", overlay, "q0")
  builder.write_html()          # folder/index.html
  """

  def __init__(self, folder: str, title: str):
    self.folder = folder
    self.title = title
    self._sections: list[tuple[str, str, list[str]]] = []
    self._names: set[str] = set()

  def section(self, title: str, text: str = "") -> None:
    """Starts a section; what is added next goes into it."""
    anchor = _safe_name(title.lower())
    while any(anchor == a for a, _, _ in self._sections):
      anchor += "_"
    items = [f"<p>{html.escape(text)}</p>"] if text else []
    self._sections.append((anchor, title, items))

  def _items(self) -> list[str]:
    if not self._sections:
      self.section(self.title)
    return self._sections[-1][2]

  def add_image(self, stem: str, image: np.ndarray | bytes, caption: str = "", colors=0) -> str:
    """Writes `image` (RGB array or PNG bytes) as `<stem>.png` (made unique) and shows it.

    Args:
      stem: file name without extension (unsafe characters replaced).
      image: RGB uint8 array or encoded PNG bytes.
      caption: shown under the image.
      colors: arrays only: palette size (drawing.encode_png; 0 = full colour).

    Returns:
      The file name, relative to the folder.
    """
    name = _safe_name(stem)
    candidate, n = name, 1
    while candidate in self._names:
      n += 1
      candidate = f"{name}_{n}"
    self._names.add(candidate)
    filename = candidate + ".png"
    data = image if isinstance(image, bytes) else drawing.encode_png(image, colors)
    file_utils.atomic_write_bytes(os.path.join(self.folder, filename), data)
    src = html.escape(filename, quote=True)
    alt = html.escape(caption or candidate, quote=True)
    self._items().append(
      f'<figure><a href="{src}"><img src="{src}" alt="{alt}"></a>'
      f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )
    return filename

  def add_text(self, text: str, preformatted: bool = False) -> None:
    tag = "pre" if preformatted else "p"
    self._items().append(f"<{tag}>{html.escape(text)}</{tag}>")

  def add_table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
      "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    self._items().append(f"<table><tr>{cells}</tr>{body}</table>")

  def add_legend(self, colors: Mapping[str, Sequence[int]], prefix: str = "") -> None:
    entries = "".join(
      f'<span class="swatch" style="background:{_hex(c)}"></span>{html.escape(label)}'
      for label, c in colors.items()
    )
    self._items().append(f"<p>{html.escape(prefix)}{entries}</p>")

  def html(self) -> str:
    """The page: inline CSS, links only to the PNGs written into the folder."""
    nav = " ".join(
      f'<a href="#{a}">{html.escape(t)}</a>'
      for a, t, _ in self._sections
      if len(self._sections) > 1
    )
    parts = [
      "<!DOCTYPE html>",
      '<html lang="en"><head><meta charset="utf-8">',
      f"<title>{html.escape(self.title)}</title>",
      f"<style>{_CSS}</style></head><body>",
      f"<h1>{html.escape(self.title)}</h1>",
    ]
    if nav:
      parts.append(f"<nav>{nav}</nav>")
    for anchor, title, items in self._sections:
      parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>')
      parts.extend(items)
      parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

  def write_html(self) -> str:
    """Writes `<folder>/index.html`; returns its path."""
    path = os.path.join(self.folder, INDEX_HTML)
    file_utils.atomic_write_text(path, self.html())
    return path


def write_report(report_dir: str, title: str, fill: Callable[[ReportBuilder], None]) -> str:
  """Builds a report folder atomically: `fill(builder)` adds sections, then index.html.

  An existing `report_dir` is replaced whole once the new one is complete; on
  an error it is left as it was (files.atomic_write_dir).

  Returns:
    The path of `<report_dir>/index.html`.

  Raises:
    IOError: naming the folder, if it cannot be created; what `fill` raises.
  """

  def write(folder):
    builder = ReportBuilder(folder, title)
    fill(builder)
    builder.write_html()

  file_utils.atomic_write_dir(report_dir, write)
  return os.path.join(report_dir, INDEX_HTML)


# --------------------------------------------------------------------------- retrieval


def _protocol_ranks(ranks) -> dict[str, np.ndarray]:
  if isinstance(ranks, Mapping):
    return {p: np.asarray(ranks[p]) for p in ground_truth.PROTOCOLS}
  return {p: np.asarray(ranks) for p in ground_truth.PROTOCOLS}


def shown_queries(num_queries: int, max_queries: int) -> list[int]:
  """The queries a report draws ranked lists for: all, or `max_queries` evenly spread."""
  if max_queries <= 0 or num_queries <= max_queries:
    return list(range(num_queries))
  return sorted(set(np.linspace(0, num_queries - 1, max_queries).round().astype(int).tolist()))


def check_images(
  images_dir: str, names: Sequence[str], image_extension: str = ".jpg", what: str = "images"
) -> None:
  """Refuses, with one line counting them, names whose image file is missing.

  Raises:
    FileNotFoundError: '<n> of <total> images (*.jpg) missing in <dir>: a, b, ...'.
  """
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"{images_dir}: images folder not found")
  missing = [n for n in names if not os.path.isfile(gnd_image_path(images_dir, n, image_extension))]
  if missing:
    raise FileNotFoundError(
      descriptor_reading.missing_message(
        missing, len(names), f"{what} (*{image_extension})", images_dir
      )
    )


def add_retrieval_sections(
  builder: ReportBuilder,
  gt: ground_truth.RevisitedGroundTruth,
  ranks: np.ndarray | Mapping[str, np.ndarray],
  images_dir: str,
  results: Mapping[str, metrics.MapResult] | None = None,
  image_extension: str = ".jpg",
  top_k: int = 10,
  max_queries: int = 50,
  thumb_size: int = 96,
  ranked_list_protocol: str = "medium",
  label: str = "",
) -> None:
  """Adds the mAP table, the AP and precision-recall plots and the ranked lists of a ranking.

  Args:
    builder: the report.
    gt: the ground truth the ranking is scored against.
    ranks: int [Q, K] database indices per query, best first (indices past
      `gt.imlist` are distractors: grey tiles); or {protocol: [Q, K]} when
      the ranking differs per protocol (geometric verification).
    images_dir: folder of `<name><image_extension>` images.
    results: {protocol: MapResult}; default computed from `ranks`.
    image_extension: of the image files.
    top_k: results drawn per query.
    max_queries: ranked lists drawn (evenly spread over the queries; 0 = all).
    thumb_size: thumbnail side in pixels.
    ranked_list_protocol: whose ranking the lists show when ranks differ per protocol.
    label: prefix of section titles and file names (several rankings in one report).

  Raises:
    FileNotFoundError: images missing (all counted, before any is drawn).
    images.ImageError: an image that does not decode (named).
  """
  by_protocol = _protocol_ranks(ranks)
  if results is None:
    results = {
      p: metrics.compute_map(r, ground_truth.protocol_ground_truth(gt, p))
      for p, r in by_protocol.items()
    }
  shown = shown_queries(gt.num_queries, max_queries)
  list_ranks = by_protocol[ranked_list_protocol]
  top = list_ranks[:, :top_k]
  needed_db = sorted({int(i) for q in shown for i in top[q] if int(i) < gt.num_db})
  check_images(images_dir, [gt.qimlist[q] for q in shown], image_extension, "query images")
  check_images(images_dir, [gt.imlist[i] for i in needed_db], image_extension, "index images")
  prefix = f"{label}: " if label else ""
  stem = _safe_name(label) + "_" if label else ""

  builder.section(f"{prefix}Summary")
  rows = []
  for protocol in ground_truth.PROTOCOLS:
    result = results[protocol]
    rows.append(
      [protocol.capitalize(), f"{100 * result.mean_ap:.2f}"]
      + [f"{100 * v:.2f}" for v in result.mean_precision_at_k]
      + [result.num_skipped]
    )
  kappas = results[ground_truth.PROTOCOLS[0]].kappas
  builder.add_table(
    ["protocol", "mAP %"] + [f"mP@{k} %" for k in kappas] + ["queries skipped"], rows
  )
  builder.add_text(f"{gt.num_queries} queries, {gt.num_db} database images ({gt.dataset}).")
  builder.section(f"{prefix}Average precision per query")
  builder.add_image(
    stem + "ap_per_query", ap_plot_png(results, list(gt.qimlist)), "AP per query and protocol"
  )
  builder.section(f"{prefix}Precision-recall")
  builder.add_image(
    stem + "precision_recall",
    pr_plot_png(by_protocol, gt, results),
    "per query (grey) and mean interpolated (colour)",
  )
  builder.section(
    f"{prefix}Ranked lists",
    f"Top {top_k} per query ({len(shown)} of {gt.num_queries} queries), frames coloured by the "
    f"ground truth; the query's box in yellow."
    + (f" Rankings of the {ranked_list_protocol} protocol." if isinstance(ranks, Mapping) else ""),
  )
  builder.add_legend(LABEL_COLORS)

  @functools.lru_cache(maxsize=512)
  def load(name: str) -> np.ndarray:
    image = image_loading.load_image(gnd_image_path(images_dir, name, image_extension))
    return drawing.fit(image, 4 * thumb_size)[0] if max(image.shape[:2]) > 4 * thumb_size else image

  for q in shown:
    name = gt.qimlist[q]
    query = image_loading.load_image(gnd_image_path(images_dir, name, image_extension))
    ranking = [int(i) for i in top[q]]
    labels = gt_labels(gt.gnd[q], ranking)
    images = [load(gt.imlist[i]) if i < gt.num_db else None for i in ranking]
    aps = " ".join(f"{p[0].upper()} {_percent(results[p].aps[q])}" for p in ground_truth.PROTOCOLS)
    picture = ranked_list_image(
      query, images, labels, gt.gnd[q].get("bbx"), f"{name}  AP {aps}", thumb_size
    )
    builder.add_image(f"{stem}ranked_{name}", picture, f"{name}: AP {aps}", RANKED_LIST_COLORS)


def _percent(value: float) -> str:
  return "skipped" if np.isnan(value) else f"{100 * value:.1f}"


def write_retrieval_report(
  report_dir: str,
  gt: ground_truth.RevisitedGroundTruth,
  ranks: np.ndarray | Mapping[str, np.ndarray],
  images_dir: str,
  results: Mapping[str, metrics.MapResult] | None = None,
  title: str = "",
  summary: str = "",
  **options,
) -> str:
  """A report folder with the sections of `add_retrieval_sections` (and `summary` text).

  Args:
    report_dir: the folder (replaced whole, atomically).
    gt / ranks / images_dir / results: as add_retrieval_sections.
    title: page title; default "<dataset> retrieval".
    summary: text shown first (e.g. perform_retrieval's printed lines).
    **options: add_retrieval_sections' image_extension, top_k, max_queries,
      thumb_size, ranked_list_protocol.

  Returns:
    The path of index.html.
  """

  def fill(builder):
    if summary:
      builder.section("Evaluation")
      builder.add_text(summary, preformatted=True)
    add_retrieval_sections(builder, gt, ranks, images_dir, results, **options)

  return write_report(report_dir, title or f"{gt.dataset} retrieval", fill)
