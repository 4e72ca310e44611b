"""When a training run has diverged: a non-finite loss or weights, or accuracy stuck at chance.

    monitor = divergence.DivergenceMonitor(num_classes, warmup_steps, window_steps, margin)
    monitor.observe(step, loss, correct, examples)   # after every step; raises DivergedError

Rules (the TrainConfig fields are documented in docs/CONVERGENCE.md):

- the mean loss of a step is NaN or inf: NonFiniteLossError at that step;
- the weights are not finite when a checkpoint is due (a step whose loss was
  still finite produced them): NonFiniteWeightsError, nothing is saved;
- after the warm-up, the training accuracy (margin-free cosines) of the last
  `window_steps` steps together is at most (1 + margin) / num_classes:
  StuckAtChanceError. The window restarts with each process (a resumed run
  counts anew).

The trainer adds the checkpoint kept and the page that says what to try
(`stop_message`), so that dolg-train prints one short line and exits 1:

    training diverged at step 37: the loss is nan (last finite loss at step 36);
    checkpoint kept: runs/r/checkpoints/ckpt-20; see docs/CONVERGENCE.md#nan-or-inf-loss

The advice per cause (learning rate, clipping, warm-up, head scale, data
checks) is in docs/CONVERGENCE.md, not in the message.
"""

import collections
import dataclasses
import math

import tensorflow as tf

DOCS = "docs/CONVERGENCE.md"
# The section of DOCS on each kind of divergence (DivergedError.kind).
DOCS_SECTIONS = {"non_finite": "nan-or-inf-loss", "chance": "stuck-at-chance"}


@dataclasses.dataclass(frozen=True)
class LastGood:
  """The last step whose loss was finite: its step, loss and training accuracy."""

  step: int
  loss: float
  accuracy: float


class DivergedError(RuntimeError):
  """The run diverged; the message says at which step and why (one line).

  Attributes:
    step: the step at which it was detected.
    last_good: the last step with a finite loss (None if there was none).
    kind: 'non_finite' or 'chance' (what to try differs).
  """

  kind = "non_finite"

  def __init__(self, message: str, step: int, last_good: LastGood | None = None):
    super().__init__(message)
    self.step = step
    self.last_good = last_good


class NonFiniteLossError(DivergedError):
  """The training loss became NaN or inf."""


class NonFiniteWeightsError(DivergedError):
  """The weights became NaN or inf (found before a checkpoint is saved)."""


class StuckAtChanceError(DivergedError):
  """The training accuracy stayed at chance level for a whole window of steps."""

  kind = "chance"


def chance_threshold(num_classes: int, margin: float) -> float:
  """The accuracy at or below which a window counts as 'at chance': (1 + margin) / num_classes."""
  return (1.0 + margin) / max(num_classes, 1)


def window_steps(steps: int, min_epochs: float, steps_per_epoch: int) -> int:
  """The chance window in steps: max(steps, min_epochs x steps_per_epoch); 0 (off) if steps is 0."""
  if steps <= 0:
    return 0
  return max(int(steps), int(math.ceil(min_epochs * steps_per_epoch)))


def _describe_last(last: LastGood | None) -> str:
  return "no finite loss before" if last is None else f"last finite loss at step {last.step}"


class DivergenceMonitor:
  """Watches every step's loss and accuracy; raises DivergedError when a rule (module doc) fires."""

  def __init__(self, num_classes: int, warmup_steps: int, window: int, margin: float):
    """Sets the rules.

    Args:
      num_classes: classes of the margin head (chance is 1 / num_classes).
      warmup_steps: steps before the chance window may start.
      window: steps of the chance window (window_steps); 0 = no chance rule.
      margin: 'at chance' is an accuracy <= (1 + margin) / num_classes.
    """
    self.num_classes = num_classes
    self.warmup_steps = warmup_steps
    self.window = window
    self.threshold = chance_threshold(num_classes, margin)
    self.last_good: LastGood | None = None
    self._recent = collections.deque(maxlen=window or None)

  def observe(self, step: int, loss: float, correct: float, examples: float) -> None:
    """Checks step `step`: its mean loss, and `correct` of `examples` right (margin-free).

    Raises:
      NonFiniteLossError: the loss is NaN or inf.
      StuckAtChanceError: the accuracy of the last `window` steps after the
        warm-up is at chance.
    """
    accuracy = correct / examples if examples else 0.0
    if not math.isfinite(loss):
      raise NonFiniteLossError(
        f"step {step}: the loss is {loss} ({_describe_last(self.last_good)})",
        step,
        self.last_good,
      )
    self.last_good = LastGood(step, loss, accuracy)
    if not self.window or step <= self.warmup_steps:
      return
    self._recent.append((correct, examples))
    if len(self._recent) < self.window:
      return
    seen = sum(n for _, n in self._recent)
    window_accuracy = sum(c for c, _ in self._recent) / max(seen, 1.0)
    if window_accuracy <= self.threshold:
      raise StuckAtChanceError(
        f"step {step}: accuracy {window_accuracy:.3f} over {self.window} steps is at chance "
        f"(1/{self.num_classes})",
        step,
        self.last_good,
      )

  def check_weights(self, step: int, finite: bool) -> None:
    """Raises NonFiniteWeightsError unless `finite` (all weights after step `step` are finite)."""
    if not finite:
      raise NonFiniteWeightsError(
        f"step {step}: the weights are NaN or inf ({_describe_last(self.last_good)})",
        step,
        self.last_good,
      )


@tf.function
def all_finite(variables) -> tf.Tensor:
  """Whether every value of every variable in `variables` is finite (a boolean tensor)."""
  return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])


def advice(error: DivergedError) -> str:
  """Where to read what to try: `see docs/CONVERGENCE.md#<the section on error's kind>`.

  The advice follows the cause, not the run's settings: the page goes through
  them (learning rate, clip_norm, warm-up, head scale, mixed precision, data
  checks).
  """
  return f"see {DOCS}#{DOCS_SECTIONS[error.kind]}"


def stop_message(error: DivergedError, checkpoint: str | None, run_root: str, advice_text: str):
  """The one line dolg-train prints: what happened at which step, the checkpoint kept, advice_text.

  Nothing is saved after the divergence, so the checkpoint named is the last
  one before it ('no checkpoint in <run_root>' when there is none).
  """
  kept = f"checkpoint kept: {checkpoint}" if checkpoint else f"no checkpoint in {run_root}"
  return f"training diverged at {error}; {kept}; {advice_text}"
