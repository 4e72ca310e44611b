"""Learning-rate schedules: linear warm-up followed by cosine, linear or constant."""

from official.modeling.optimization import lr_schedule

from dolg_tf.keras_api import keras


def build_schedule(
  initial_lr: float,
  total_steps: int,
  schedule: str = "cosine",
  warmup_steps: int = 0,
  warmup_factor: float = 0.1,
) -> keras.optimizers.schedules.LearningRateSchedule:
  """Returns the schedule, a function of the optimizer's step.

  Warm-up rises linearly from `warmup_factor * initial_lr` to the decayed value
  at `warmup_steps` (tf-models-official's LinearWarmup); the decay runs over
  all `total_steps` counted from step 0, like the official DOLG (pycls) schedule.

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
  if warmup_steps <= 0:
    return decayed
  return lr_schedule.LinearWarmup(
    decayed, warmup_steps=warmup_steps, warmup_learning_rate=warmup_factor * initial_lr
  )
