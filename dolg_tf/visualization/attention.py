"""Attention pictures: a model's attention map as a heat map over the image it saw.

DOLG's self-attention of its local branch and DELG's keypoint attention are
both the "attention" output of `model(..., return_intermediates=True)`.
`attention_figure` lays the image and its overlays out as labelled panels
with a colour bar (the overlay is scaled per image from its minimum, blue, to
its maximum, red).
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from dolg_tf.keras_api import keras
from dolg_tf.visualization import drawing

# Layout of attention_figure: a label strip over each panel, PANEL_GAP between
# panels, then the colour bar.
PANEL_LABEL_HEIGHT = 18
PANEL_GAP = 4
COLOUR_BAR_WIDTH = 12
FONT_SIZE = 12


def attention_map(model: keras.Model, image: np.ndarray) -> np.ndarray:
  """The model's attention on an RGB uint8 image: float32 [h, w] at the local branch's stride.

  DOLG: the self-attention of its local branch; DELG: the keypoint attention
  (both the "attention" output of `call(..., return_intermediates=True)`).
  """
  batch = tf.convert_to_tensor(np.asarray(image, np.float32)[None])
  outputs = model(batch, training=False, return_intermediates=True)
  return outputs["attention"].numpy()[0, ..., 0]


def attention_overlay(image: np.ndarray, attention: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """An attention map ([h, w] or [h, w, 1], any stride) blended over `image` as a heat map.

  Returns:
    RGB uint8 with the image's size (drawing.heatmap_overlay).
  """
  return drawing.heatmap_overlay(image, np.asarray(attention, np.float32), alpha)


def attention_picture(
  model: keras.Model, image: np.ndarray, max_image_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
  """(the image as the model saw it, shrunk to `max_image_size`; its attention overlay)."""
  if max_image_size > 0:
    image = drawing.fit(image, max_image_size)[0]
  return image, attention_overlay(image, attention_map(model, image))


def attention_figure(panels: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
  """Panels side by side, each under its label, then a colour bar (high: red, low: blue).

  Layout: panel k at x = sum of the earlier panels' widths + k * PANEL_GAP,
  y = PANEL_LABEL_HEIGHT; the colour bar (drawing.colour_bar) PANEL_GAP right
  of the last panel, as tall as the tallest panel.

  Args:
    panels: RGB uint8 images, e.g. the image and its attention overlay(s).
    labels: one per panel, e.g. "image", "DOLG attention".

  Returns:
    RGB uint8 [PANEL_LABEL_HEIGHT + max height, ..., 3].

  Raises:
    ValueError: a label count that differs from the panel count.
  """
  if len(panels) != len(labels):
    raise ValueError(f"{len(panels)} panels but {len(labels)} labels")
  columns = [
    drawing.vstack(
      [drawing.text_strip(p.shape[1], PANEL_LABEL_HEIGHT, label, FONT_SIZE), drawing.check_image(p)]
    )
    for p, label in zip(panels, labels)
  ]
  height = max(p.shape[0] for p in panels)
  bar = drawing.colour_bar(height, COLOUR_BAR_WIDTH, ("high", "low"), FONT_SIZE - 1)
  header = drawing.text_strip(bar.shape[1], PANEL_LABEL_HEIGHT, "", FONT_SIZE)
  return drawing.hstack(columns + [drawing.vstack([header, bar])], gap=PANEL_GAP)
