"""Groups decoded images of equal size into batches for one forward each.

    batcher = ShapeBatcher(batch_size=8, max_pending=32)
    for item in items:
      for batch in batcher.add(item.image.shape, item):
        run(batch)
    for batch in batcher.flush():
      run(batch)

A batch holds items of one key (the resized image shape) only. `add` returns
a group as soon as it has `batch_size` items; when more than `max_pending`
items wait in all groups together (many distinct sizes), the largest group is
returned early, so memory stays bounded. Groups come out in a deterministic
order: full ones when they fill, the rest oldest first.
"""

from collections.abc import Hashable

import numpy as np

from dolg_tf.extraction import local_extractor


class ShapeBatcher:
  """Batches of up to `batch_size` items with equal keys, at most `max_pending` held."""

  def __init__(self, batch_size: int, max_pending: int | None = None):
    """Args: batch_size >= 1; max_pending >= batch_size (default 4 * batch_size).

    Raises:
      ValueError: batch_size < 1 or max_pending < batch_size.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_pending = 4 * batch_size if max_pending is None else max_pending
    if max_pending < batch_size:
      raise ValueError(f"max_pending ({max_pending}) must be >= batch_size ({batch_size})")
    self.batch_size = batch_size
    self.max_pending = max_pending
    self._groups = {}  # key -> items, in first-arrival order of the keys
    self._pending = 0

  def __len__(self) -> int:
    """Items held."""
    return self._pending

  def add(self, key: Hashable, item) -> list[list]:
    """Adds `item` to its key's group; returns the batches ready to run (often none)."""
    self._groups.setdefault(key, []).append(item)
    self._pending += 1
    ready = []
    if len(self._groups[key]) >= self.batch_size:
      ready.append(self._take(key))
    while self._pending > self.max_pending:
      ready.append(self._take(max(self._groups, key=lambda k: len(self._groups[k]))))
    return ready

  def flush(self) -> list[list]:
    """Every group still held, oldest first; the batcher is then empty."""
    return [self._take(key) for key in list(self._groups)]

  def _take(self, key: Hashable) -> list:
    items = self._groups.pop(key)
    self._pending -= len(items)
    return items


def image_shape(image) -> tuple[int, ...]:
  """The shape of a preprocessed image (a uint8 array or a PreprocessedImage): its batching key."""
  if isinstance(image, local_extractor.PreprocessedImage):
    image = image.image
  return tuple(np.shape(image))
