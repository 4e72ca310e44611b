"""Tests for what a training run shows: the progress line and the TensorBoard scalars."""

import collections
import glob
import math
import os

import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import run_layout
from dolg_tf.keras_api import keras
from dolg_tf.training import train_log, trainer
from dolg_tf.utils import progress
from tests import testutil


def read_scalars(folder: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the TensorBoard event files in `folder`."""
  scalars = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(folder, "events.*"))):
    for raw in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(raw.numpy())
      for value in event.summary.value:
        scalars[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
  return dict(scalars)


class VisibilityTest(tf.test.TestCase, parameterized.TestCase):
  def setUp(self):
    super().setUp()
    testutil.log_absl_info(self)

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.train_pattern, cls.validation_pattern, cls.num_classes = testutil.training_data(
      "visibility_data"
    )

  def _trainer(self, model, logdir, **train_values):
    values = dict(
      batch_size=4,
      max_steps=4,
      log_every=2,
      checkpoint_every=4,
      validate_every=2,
      validation_steps=1,
      export_at_end=False,
      # A GeM p that moves visibly in 4 steps.
      initial_lr=0.05,
    )
    values.update(train_values)
    experiment = testutil.training_experiment(
      model,
      self.train_pattern,
      self.num_classes,
      validation_pattern=self.validation_pattern,
      **values,
    )
    return trainer.Trainer(experiment, run_layout.RunLayout(logdir))

  def _train_logging_lines(self, run) -> tuple[dict, list[str]]:
    with self.assertLogs(level="INFO") as logs:
      metrics = run.train()
    return metrics, [record.getMessage() for record in logs.records]

  @parameterized.parameters(("dolg",), ("delg",))
  def test_progress_line_and_summaries_show_every_scalar(self, name):
    model = testutil.TINY_TRAIN_DOLG if name == "dolg" else testutil.TINY_TRAIN_DELG
    logdir = self.create_tempdir().full_path
    run = self._trainer(model, logdir)
    metrics, lines = self._train_logging_lines(run)
    gem_p = float(train_log.gem_layer(run.model).p.numpy())
    if model.gem_p_trainable:  # DOLG learns p; DELG keeps it (the value is shown all the same)
      self.assertNotAlmostEqual(gem_p, 3.0, places=6)
    else:
      self.assertEqual(gem_p, 3.0)
    self.assertAlmostEqual(metrics["gem_p"], gem_p, places=6)
    step_lines = [line for line in lines if line.startswith("step 4/4")]
    self.assertLen(step_lines, 1, lines)
    self.assertRegex(
      step_lines[0],
      r"^step 4/4, .* steps/s, ETA 0s \| loss \d+\.\d{4} \| acc \d\.\d{3} \| lr 0\.\d{5} \| "
      rf"gem p {gem_p:.3f} \| val acc {metrics['validation_accuracy']:.3f} \| \d+\.\d img/s$",
    )
    # Validation runs before the line of its step, so that line shows it.
    (first,) = [line for line in lines if line.startswith("step 2/4")]
    self.assertIn(" | val acc ", first)
    self.assertLen([line for line in lines if "validation accuracy" in line], 2)

    train_scalars = read_scalars(os.path.join(logdir, "train"))
    expected = {"loss", "accuracy", "learning_rate", "gem_p", "images_per_second"}
    if name == "delg":
      expected |= {"global_loss", "attention_loss", "reconstruction_loss"}
    self.assertEqual(set(train_scalars), expected)
    for tag in expected:
      self.assertEqual(set(train_scalars[tag]), {2, 4}, tag)
    self.assertAlmostEqual(train_scalars["gem_p"][4], gem_p, places=5)
    self.assertAlmostEqual(train_scalars["loss"][4], metrics["loss"], places=5)
    self.assertAlmostEqual(train_scalars["accuracy"][4], metrics["accuracy"], places=5)
    self.assertAlmostEqual(train_scalars["learning_rate"][4], float(run.learning_rate(4)), places=7)
    validation_scalars = read_scalars(os.path.join(logdir, "validation"))
    self.assertEqual(set(validation_scalars), {"accuracy"})
    # Once per validation: the final one is not repeated at the last step.
    self.assertEqual(set(validation_scalars["accuracy"]), {2, 4})
    self.assertAlmostEqual(
      validation_scalars["accuracy"][4], metrics["validation_accuracy"], places=6
    )


class TrainLogTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    testutil.log_absl_info(self)

  def test_a_model_without_gem_shows_no_gem_p(self):
    model = keras.Sequential([keras.layers.Dense(2)])
    model.build([None, 3])
    self.assertIsNone(train_log.gem_layer(model))
    folder = self.create_tempdir().full_path
    writer = tf.summary.create_file_writer(folder)
    now = [0.0]
    steps = progress.Progress(10, "step", "steps", interval=math.inf, clock=lambda: now[0])
    now[0] = 2.0  # 2 steps in 2 s
    log = train_log.TrainLog(steps, writer, writer, model, batch_size=4)
    with self.assertLogs(level="INFO") as logs:
      log.log(2, dict(loss=1.5, accuracy=0.25, lr=0.01))
      log.log_validation(2, 0.5)
    writer.flush()
    self.assertEqual(
      logs.records[0].getMessage(),
      "step 2/10, 1.0 steps/s, ETA 8s | loss 1.5000 | acc 0.250 | lr 0.01000 | 4.0 img/s",
    )
    self.assertEqual(logs.records[1].getMessage(), "step 2 | validation accuracy 0.5000")
    self.assertNotIn("gem_p", read_scalars(folder))


if __name__ == "__main__":
  tf.test.main()
