"""Rows of a benchmark timed in turn, round after round, so that a drift of the machine's
speed hits all of them alike."""

import collections
import time

import numpy as np


def interleaved_rates(rows, items_per_run: int, rounds: int, untimed_rounds: int = 0):
  """Rates of competing rows measured in turn.

  Args:
    rows: {name: callable}; one call processes `items_per_run` items.
    items_per_run: images (or steps x batch) of one call.
    rounds: timed rounds; each calls every row once, in order.
    untimed_rounds: rounds run first and not timed (warm-up).

  Returns:
    ({name: median items/s}, {name: [items/s of each timed round]}).
  """
  samples = collections.defaultdict(list)
  for round_index in range(untimed_rounds + rounds):
    for name, run in rows.items():
      start = time.perf_counter()
      run()
      if round_index >= untimed_rounds:
        samples[name].append(items_per_run / (time.perf_counter() - start))
  return {name: float(np.median(values)) for name, values in samples.items()}, dict(samples)
