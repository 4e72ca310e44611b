"""Learning-rate schedules: linear warm-up followed by cosine, linear or constant.

Two forms of the same recipe (see docs/TRAINING_PARITY.md):

- per step (the default, `steps_per_epoch=0`): tf-models-official's
  LinearWarmup rises linearly from `warmup_factor * initial_lr` to the decayed
  value at `warmup_steps`; the decay is evaluated at every step.
- per epoch (`steps_per_epoch > 0`): the official DOLG code's (pycls
  `get_epoch_lr`) schedule, set once at the start of every epoch: the decay at
  epoch e times the warm-up factor `warmup_factor * (1 - e / W) + e / W` while
  e < W warm-up epochs, so that the learning rate is constant within an epoch.
"""

import tensorflow as tf
from official.modeling.optimization import lr_schedule

from dolg_tf.keras_api import keras


class EpochwiseWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
  """The official DOLG (pycls) schedule: `decay` and warm-up evaluated per epoch.

  lr(step) = decay(e * steps_per_epoch) * factor(e), e = step // steps_per_epoch,
  factor(e) = warmup_factor * (1 - e / W) + e / W for e < W = warmup_epochs,
  else 1. With `decay` the cosine over total_steps = max_epoch * steps_per_epoch,
  decay(e * steps_per_epoch) = 0.5 * lr * (1 + cos(pi * e / max_epoch)): pycls'
  lr_fun_cos.
  """

  def __init__(self, decay, steps_per_epoch: int, warmup_epochs: float, warmup_factor: float):
    super().__init__()
    self.decay = decay
    self.steps_per_epoch = int(steps_per_epoch)
    self.warmup_epochs = float(warmup_epochs)
    self.warmup_factor = float(warmup_factor)

  def __call__(self, step):
    epoch = tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch)
    lr = self.decay(epoch * self.steps_per_epoch)
    if self.warmup_epochs <= 0:
      return lr
    alpha = tf.cast(epoch, lr.dtype) / self.warmup_epochs
    factor = self.warmup_factor * (1.0 - alpha) + alpha
    return tf.where(alpha < 1.0, lr * factor, lr)

  def get_config(self):
    return dict(
      decay=keras.optimizers.schedules.serialize(self.decay),
      steps_per_epoch=self.steps_per_epoch,
      warmup_epochs=self.warmup_epochs,
      warmup_factor=self.warmup_factor,
    )


def build_schedule(
  initial_lr: float,
  total_steps: int,
  schedule: str = "cosine",
  warmup_steps: int = 0,
  warmup_factor: float = 0.1,
  steps_per_epoch: int = 0,
) -> keras.optimizers.schedules.LearningRateSchedule:
  """Returns the schedule, a function of the optimizer's step.

  The decay runs over all `total_steps` counted from step 0, like the official
  DOLG (pycls) schedule. With `steps_per_epoch` = 0 (default) the warm-up and
  decay are evaluated at every step (LinearWarmup: from `warmup_factor *
  initial_lr` linearly to the decayed value at `warmup_steps`); with
  `steps_per_epoch` > 0 they are evaluated once per epoch exactly as the
  official code does (EpochwiseWarmupDecay, warm-up epochs = warmup_steps /
  steps_per_epoch).

  Raises:
    ValueError: for an unknown schedule or non-positive total_steps.
  """
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  if schedule == "cosine":
    decayed = keras.optimizers.schedules.CosineDecay(initial_lr, total_steps, alpha=0.0)
  elif schedule == "linear":
    decayed = keras.optimizers.schedules.PolynomialDecay(
      initial_lr, total_steps, end_learning_rate=0.0, power=1.0
    )
  elif schedule == "constant":
    decayed = keras.optimizers.schedules.PolynomialDecay(
      initial_lr, total_steps, end_learning_rate=initial_lr, power=1.0
    )
  else:
    raise ValueError(f"unknown lr schedule {schedule!r}")
  if steps_per_epoch > 0:
    return EpochwiseWarmupDecay(
      decayed, steps_per_epoch, warmup_steps / steps_per_epoch, warmup_factor
    )
  if warmup_steps <= 0:
    return decayed
  return lr_schedule.LinearWarmup(
    decayed, warmup_steps=warmup_steps, warmup_learning_rate=warmup_factor * initial_lr
  )
