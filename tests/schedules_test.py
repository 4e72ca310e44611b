"""Tests for dolg_tf.training.schedules and the train section of dolg_tf.config."""

import math

import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf.training import schedules


class ScheduleTest(tf.test.TestCase, parameterized.TestCase):
  def test_cosine_with_warmup(self):
    schedule = schedules.build_schedule(0.1, 100, "cosine", warmup_steps=10, warmup_factor=0.1)
    self.assertAllClose(schedule(0), 0.01)
    after_warmup = 0.05 * (1 + math.cos(math.pi * 10 / 100))
    self.assertAllClose(schedule(5), 0.01 + 0.5 * (after_warmup - 0.01), rtol=1e-5)
    self.assertAllClose(schedule(10), after_warmup, rtol=1e-5)
    self.assertAllClose(schedule(50), 0.05, rtol=1e-5)
    self.assertAllClose(schedule(100), 0.0, atol=1e-7)

  def test_linear_and_constant(self):
    linear = schedules.build_schedule(0.2, 10, "linear")
    self.assertAllClose([linear(0), linear(5), linear(10)], [0.2, 0.1, 0.0], atol=1e-7)
    constant = schedules.build_schedule(0.2, 10, "constant")
    self.assertAllClose([constant(0), constant(10)], [0.2, 0.2])

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "total_steps"):
      schedules.build_schedule(0.1, 0)
    with self.assertRaisesRegex(ValueError, "schedule"):
      schedules.build_schedule(0.1, 10, "step")


class TrainConfigTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    ("lr_schedule", "step"),
    ("mixed_precision", "float16"),
    ("distribution_strategy", "parameter_server"),
    ("batch_size", 0),
    ("initial_lr", 0.0),
    ("warmup_epochs", -1.0),
  )
  def test_invalid_values_name_the_field(self, field, value):
    with self.assertRaisesRegex(ValueError, field):
      config_lib.TrainConfig(**{field: value})

  def test_save(self):
    path = config_lib.save_config(
      config_lib.ExperimentConfig(train=config_lib.TrainConfig(batch_size=8)),
      self.create_tempdir().full_path,
    )
    with open(path) as f:
      self.assertIn('"batch_size": 8', f.read())


if __name__ == "__main__":
  tf.test.main()
