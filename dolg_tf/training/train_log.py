"""What a training run shows: the progress line and the TensorBoard scalars.

Every `log_every` steps one line (utils/progress.py):

    step 120/600, 1.9 steps/s, ETA 4m10s | loss 2.1034 | acc 0.281 | lr 0.01000 | gem p 3.012
      | val acc 0.344 | 61.4 img/s

and the same values as scalars of `<logdir>/train` (loss, accuracy,
learning_rate, gem_p, images_per_second; DELG's global_loss, attention_loss,
reconstruction_loss), with the validation accuracy under `<logdir>/validation`
as `accuracy` (TensorBoard draws both runs' `accuracy` on one chart). `gem p`
is the learnable GeM exponent of the global branch (DOLG and DELG); `val acc`
the last validation accuracy (shown once one was measured).
"""

import math

import tensorflow as tf
from absl import logging

from dolg_tf.model import pooling
from dolg_tf.utils import progress


def gem_layer(model) -> pooling.GeMPooling | None:
  """The global branch's GeM pooling layer of `model` (None if it has none)."""
  layers = [layer for layer in model.submodules if isinstance(layer, pooling.GeMPooling)]
  return layers[0] if layers else None


class TrainLog:
  """The progress line and the summary writers of one run (the chief's; others write to temp)."""

  def __init__(self, steps: progress.Progress, writer, validation_writer, model, batch_size: int):
    self.steps = steps
    self.writer = writer
    self.validation_writer = validation_writer
    self.batch_size = batch_size
    self.gem = gem_layer(model)
    self.validation_accuracy = math.nan
    self.validated_at = None

  def gem_p(self) -> float:
    """The current GeM p (NaN without a GeM layer)."""
    return float(self.gem.p.numpy()) if self.gem is not None else math.nan

  def log(self, step: int, metrics: dict, term_names=()) -> dict:
    """Logs the line of `step` and writes its scalars; returns `metrics` with gem_p added.

    Args:
      step: the global step.
      metrics: loss, accuracy, lr and the DELG terms named by `term_names`.
      term_names: the per-term losses to log and summarise.
    """
    metrics = dict(metrics, gem_p=self.gem_p())
    self.steps.update(step)
    images_per_second = self.steps.rate() * self.batch_size
    parts = [f"loss {metrics['loss']:.4f}", f"acc {metrics['accuracy']:.3f}"]
    parts.append(f"lr {metrics['lr']:.5f}")
    if math.isfinite(metrics["gem_p"]):
      parts.append(f"gem p {metrics['gem_p']:.3f}")
    if math.isfinite(self.validation_accuracy):
      parts.append(f"val acc {self.validation_accuracy:.3f}")
    parts.append(f"{images_per_second:.1f} img/s")
    self.steps.update(step, force=True, note=" | ".join(parts))
    if term_names:
      logging.info(
        "step %d | %s", step, " | ".join(f"{name} {metrics[name]:.4f}" for name in term_names)
      )
    with self.writer.as_default(step=step):
      for name in term_names:
        tf.summary.scalar(name, metrics[name])
      tf.summary.scalar("loss", metrics["loss"])
      tf.summary.scalar("accuracy", metrics["accuracy"])
      tf.summary.scalar("learning_rate", metrics["lr"])
      if math.isfinite(metrics["gem_p"]):
        tf.summary.scalar("gem_p", metrics["gem_p"])
      tf.summary.scalar("images_per_second", images_per_second)
    self.writer.flush()
    return metrics

  def log_validation(self, step: int, accuracy: float) -> float:
    """Logs and summarises a validation accuracy (NaN: none was measured); returns it."""
    if math.isnan(accuracy):
      return accuracy
    self.validation_accuracy, self.validated_at = accuracy, step
    logging.info("step %d | validation accuracy %.4f", step, accuracy)
    with self.validation_writer.as_default(step=step):
      tf.summary.scalar("accuracy", accuracy)
    self.validation_writer.flush()
    return accuracy
