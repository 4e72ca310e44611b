"""The one progress logger of long jobs: count done/total, rate and ETA.

    progress = progress_lib.Progress(len(todo), verb="extracted", unit="img")
    for ...:
      ...
      progress.update(done, processed=done + failed, failed=failed, skipped=skipped)
    progress.update(done, processed=done + failed, force=True, ...)  # the final line

logs (with absl, at most once per `interval` seconds):

    extracted 120/1000 (failed 2, skipped 30), 3.1 img/s, ETA 4m43s

A training loop: `Progress(total_steps, verb="step", unit="steps", start=step)`,
then `progress.update(step, force=True, note=f"loss {loss:.4f}")` every
`log_every` steps; `rate()` is steps/s (times the batch size: img/s) and
`eta_seconds()` the time left.
"""

import math
import time
from collections.abc import Callable

from absl import logging


def format_duration(seconds: float) -> str:
  """1h02m03s / 2m03s / 3s (rounded to the second; '?' if not finite)."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m{seconds:02d}s"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _format_rate(rate: float) -> str:
  return f"{rate:.1f}" if rate >= 1.0 else f"{rate:.3g}"


class Progress:
  """Counts work done out of a total; logs the count, the rate and the ETA.

  The rate is items processed per second since the object was made (or since
  `start` items were already done); the ETA is the items left at that rate.
  Counts are absolute (`update(done)` with the running total, not a delta).

  Attributes:
    total: items to do.
    verb: first word of the line, e.g. 'extracted', 'converted', 'step'.
    unit: of the rate, e.g. 'img' (-> 'img/s'), 'steps'.
    interval: seconds between logged lines (0: every update).
    done: the last count given to `update`.
    processed: the last count of items handled (done + failed, by default done).
    counters: the last extra counters given to `update`.
  """

  def __init__(
    self,
    total: int,
    verb: str = "processed",
    unit: str = "items",
    interval: float = 30.0,
    start: int = 0,
    clock: Callable[[], float] = time.monotonic,
  ):
    """Starts the clock.

    Args:
      total: items to do (a resumed job: all items, with `start` of them done).
      verb: first word of the line.
      unit: unit of the rate.
      interval: seconds between logged lines.
      start: items already done before this object was made (not in the rate).
      clock: seconds, monotonic (tests pass a fake one).
    """
    self.total = int(total)
    self.verb = verb
    self.unit = unit
    self.interval = float(interval)
    self.start = int(start)
    self.done = self.processed = self.start
    self.counters: dict[str, int] = {}
    self._clock = clock
    self._start_time = self._last_log = clock()

  def elapsed(self) -> float:
    """Seconds since the object was made."""
    return self._clock() - self._start_time

  def rate(self) -> float:
    """Items processed per second (0 before any)."""
    return max(self.processed - self.start, 0) / max(self.elapsed(), 1e-9)

  def eta_seconds(self) -> float:
    """Seconds left at the current rate (0 when finished, inf before any item)."""
    remaining = max(self.total - self.processed, 0)
    if remaining == 0:
      return 0.0
    rate = self.rate()
    return remaining / rate if rate > 0 else math.inf

  def message(self, note: str = "") -> str:
    """The progress line of the last update, e.g. 'extracted 120/1000 (failed 2), ...'."""
    counters = ", ".join(f"{name} {value}" for name, value in self.counters.items())
    line = (
      f"{self.verb} {self.done}/{self.total}{f' ({counters})' if counters else ''}, "
      f"{_format_rate(self.rate())} {self.unit}/s, ETA {format_duration(self.eta_seconds())}"
    )
    return f"{line} | {note}" if note else line

  def update(
    self,
    done: int,
    *,
    processed: int | None = None,
    force: bool = False,
    note: str = "",
    **counters: int,
  ) -> bool:
    """Records the counts; logs the line if `interval` seconds passed (or `force`).

    Args:
      done: items done so far (the count shown).
      processed: items handled so far, for the rate and ETA (e.g. done +
        failed); default `done`.
      force: log now (e.g. the final line).
      note: appended to the line after ' | ' (e.g. 'loss 0.1234').
      **counters: extra counts shown in parentheses, in order (e.g.
        failed=2, skipped=30).

    Returns:
      Whether a line was logged.
    """
    self.done = int(done)
    self.processed = self.done if processed is None else int(processed)
    self.counters = {name: int(value) for name, value in counters.items()}
    now = self._clock()
    if not force and now - self._last_log < self.interval:
      return False
    self._last_log = now
    logging.info("%s", self.message(note))
    return True
