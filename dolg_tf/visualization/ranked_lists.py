"""Ranked lists: one query and its top-k database images, framed by their ground-truth label.

`ranked_list_image` draws thumbnails framed by their label (`LABEL_COLORS`:
easy green, hard blue, junk grey, negative red), the query's box drawn on it
(`BOX_COLOR`), its AP per protocol in the caption; `gt_labels` gives the
labels of a ranking.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from dolg_tf.visualization import drawing

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
# Layout: a caption strip, then the query tile, a wider gap, the result tiles,
# and a strip of rank numbers under them (see ranked_tile_box).
CAPTION_HEIGHT = 20
FOOTER_HEIGHT = 14
QUERY_GAP = 14
TILE_GAP = 4
FONT_SIZE = 12
# Palette of the ranked-list PNGs (drawing.encode_png): a third of the full-colour size.
RANKED_LIST_COLORS = 256


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
