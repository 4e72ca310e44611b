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

The trainer adds the checkpoint kept and what to try (`stop_message`), so that
dolg-train can print one line and exit 1.
"""

import collections
import dataclasses
import math

import tensorflow as tf


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
  if last is None:
    return "no step had a finite loss"
  return f"last finite loss {last.loss:.4f} at step {last.step} (accuracy {last.accuracy:.3f})"


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
        f"step {step}: training accuracy {window_accuracy:.4f} over the last {self.window} "
        f"steps is at chance (1/{self.num_classes} = {1.0 / self.num_classes:.4g}; the limit "
        f"is {self.threshold:.4g}, train.chance_window_steps and train.chance_margin); loss "
        f"{loss:.4f} (ln({self.num_classes}) = {math.log(self.num_classes):.4f} is a uniform "
        "guess)",
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


def advice(error: DivergedError, train, model, mixed_precision: str, num_classes: int) -> str:
  """What to try, from the run's settings (train: TrainConfig, model: ModelConfig)."""
  tries = []
  if error.kind == "chance":
    tries.append(
      f"check that the labels match the images and --num_classes ({num_classes}) matches the data"
    )
  tries.append(f"a lower --initial_lr (now {train.initial_lr:g})")
  tries.append(f"a longer warm-up (--warmup_steps, now {train.warmup_steps or 'from epochs'})")
  if train.clip_norm:
    tries.append(f"a smaller --clip_norm (now {train.clip_norm:g})")
  else:
    tries.append("gradient clipping (--clip_norm=10)")
  if mixed_precision != "float32":
    tries.append(f"--mixed_precision=float32 (now {mixed_precision})")
  if error.kind == "chance":
    root = math.sqrt(model.embedding_dim)
    tries.append(f"a smaller --head_scale (now {model.head_scale:g}; ~{root:.1f} from scratch)")
  return "; ".join(tries)


def stop_message(error: DivergedError, checkpoint: str | None, run_root: str, advice_text: str):
  """The one line dolg-train prints: what happened, the checkpoint kept, what to try."""
  if checkpoint:
    kept = (
      f"the last checkpoint, {checkpoint}, is kept (a re-run with --logdir {run_root} and "
      "--allow_config_change resumes from it with the new settings)"
    )
  else:
    kept = f"no checkpoint was saved before (a re-run with --logdir {run_root} starts over)"
  return f"training diverged at {error}; stopped without saving: {kept}; try {advice_text}"
