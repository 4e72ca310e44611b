"""Tests for dolg_tf.training.trainer: loop, checkpoints, resume, NaN stop, DELG losses."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.data import synthetic
from dolg_tf.training import train_config, trainer

TINY = config_lib.ModelConfig(
  backbone_depth=26,
  backbone_width_multiplier=0.125,
  local_dim=16,
  embedding_dim=16,
  head_scale=4.0,
)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TrainerTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = os.path.join(tf.compat.v1.test.get_temp_dir(), "data")
    cls.train_pattern, cls.validation_pattern, cls.num_classes = synthetic.ensure_demo_data(
      cls.data_dir, num_classes=4, views_per_class=8, image_size=48, num_shards=2
    )

  def _config(self, logdir, **overrides):
    values = dict(
      train_file_pattern=self.train_pattern,
      validation_file_pattern=self.validation_pattern,
      logdir=logdir,
      dataset_version="synthetic",
      num_classes=self.num_classes,
      batch_size=4,
      image_size=32,
      max_steps=4,
      initial_lr=0.01,
      log_every=2,
      checkpoint_every=2,
      validation_steps=2,
    )
    values.update(overrides)
    return train_config.TrainConfig(**values)

  def test_trains_checkpoints_and_resumes_with_optimizer_state(self):
    logdir = self.create_tempdir().full_path
    first = trainer.Trainer(TINY, self._config(logdir))
    initial = [v.numpy() for v in first.model.trainable_variables]
    metrics = first.train()
    self.assertEqual(first.step, 4)
    self.assertTrue(np.isfinite(metrics["loss"]))
    self.assertBetween(metrics["validation_accuracy"], 0.0, 1.0)
    changed = [
      not np.allclose(a, v.numpy()) for a, v in zip(initial, first.model.trainable_variables)
    ]
    self.assertTrue(any(changed))
    self.assertEqual(first.manager.latest_checkpoint, os.path.join(logdir, "checkpoints", "ckpt-4"))
    for name in ("model_config.json", "train_config.json"):
      self.assertTrue(os.path.exists(os.path.join(logdir, name)))
    self.assertNotEmpty(tf.io.gfile.glob(os.path.join(logdir, "train", "events.*")))
    momentum_before = [v.numpy() for v in first.optimizer.variables]

    resumed = trainer.Trainer(TINY, self._config(logdir, max_steps=6))
    self.assertEqual(resumed.step, 4)
    # The schedule continues from the restored step (not from 0).
    self.assertAllClose(
      resumed.learning_rate(resumed.optimizer.iterations), 0.01 * 0.5 * (1 + np.cos(np.pi * 4 / 6))
    )
    self.assertEqual(resumed.restored_from, first.manager.latest_checkpoint)
    for before, after in zip(momentum_before, resumed.optimizer.variables):
      self.assertAllClose(before, after.numpy())
    for a, b in zip(first.model.variables, resumed.model.variables):
      self.assertAllClose(a.numpy(), b.numpy())
    resumed.train()
    self.assertEqual(resumed.step, 6)

  def test_tiny_model_learns_above_chance(self):
    logdir = self.create_tempdir().full_path
    config = self._config(
      logdir,
      max_steps=60,
      batch_size=8,
      initial_lr=0.05,
      warmup_steps=5,
      log_every=20,
      checkpoint_every=60,
      min_crop_area=0.5,
      validation_steps=0,
    )
    run = trainer.Trainer(TINY, config)
    first_losses = []
    original_log = trainer.logging.info

    def capture(message, *args):
      if message.startswith("step %d/%d | loss"):
        first_losses.append(args[2])
      original_log(message, *args)

    trainer.logging.info = capture
    try:
      metrics = run.train()
    finally:
      trainer.logging.info = original_log
    chance = 1.0 / self.num_classes
    self.assertLess(first_losses[-1], first_losses[0])
    self.assertLess(first_losses[-1], np.log(self.num_classes))
    self.assertGreater(metrics["accuracy"], 2 * chance)
    self.assertGreater(metrics["validation_accuracy"], 2 * chance)

  def test_non_finite_loss_stops_without_saving_diverged_weights(self):
    logdir = self.create_tempdir().full_path
    run = trainer.Trainer(
      TINY, self._config(logdir, initial_lr=1e30, clip_norm=0.0, max_steps=20, checkpoint_every=100)
    )
    with self.assertRaisesRegex(trainer.NonFiniteLossError, "loss is (nan|inf)"):
      run.train()
    self.assertIsNone(run.manager.latest_checkpoint)

  def test_delg_trains_with_three_loss_terms(self):
    logdir = self.create_tempdir().full_path
    delg = config_lib.delg_config(
      backbone_depth=26,
      backbone_width_multiplier=0.125,
      embedding_dim=16,
      delg_reduced_dim=8,
      delg_attention_hidden=8,
      head_scale=4.0,
    )
    run = trainer.Trainer(delg, self._config(logdir, max_steps=2))
    metrics = run.train()
    for name in ("global_loss", "attention_loss", "reconstruction_loss"):
      self.assertTrue(np.isfinite(metrics[name]), name)
      self.assertGreater(metrics[name], 0.0)
    self.assertAlmostEqual(
      metrics["loss"],
      metrics["global_loss"] + metrics["attention_loss"] + 10.0 * metrics["reconstruction_loss"],
      places=3,
    )

  def test_missing_training_files_are_reported(self):
    with self.assertRaisesRegex(FileNotFoundError, "nowhere"):
      trainer.Trainer(TINY, self._config("/tmp/x", train_file_pattern="/nowhere/train-*"))

  def test_killed_run_leaves_a_usable_checkpoint(self):
    logdir = self.create_tempdir().full_path
    command = [
      sys.executable,
      "-m",
      "dolg_tf.train",
      f"--train_file_pattern={self.train_pattern}",
      "--dataset_version=synthetic",
      f"--num_classes={self.num_classes}",
      f"--logdir={logdir}",
      "--model_config=" + config_lib.save_model_config(TINY, logdir),
      "--batch_size=4",
      "--image_size=32",
      "--max_steps=100000",
      "--log_every=1",
      "--checkpoint_every=1",
      "--export=false",
    ]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
      command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint_dir = os.path.join(logdir, "checkpoints")
    try:
      deadline = time.time() + 240
      while time.time() < deadline and not tf.train.latest_checkpoint(checkpoint_dir):
        time.sleep(0.5)
      time.sleep(1.5)  # kill somewhere in the middle of later steps / saves
    finally:
      process.send_signal(signal.SIGKILL)
      process.wait()
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    self.assertIsNotNone(latest, "no checkpoint was written before the kill")
    resumed = trainer.Trainer(TINY, self._config(logdir, max_steps=1))
    self.assertEqual(resumed.restored_from, latest)
    self.assertEqual(resumed.step, int(latest.rsplit("-", 1)[1]))


if __name__ == "__main__":
  tf.test.main()
