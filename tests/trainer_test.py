"""Tests for dolg_tf.training.trainer: loop, checkpoints, resume, NaN stop, DELG losses."""

import dataclasses
import glob
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf import run_layout, train
from dolg_tf.data import gldv2, input_pipeline
from dolg_tf.keras_api import keras
from dolg_tf.model import checkpoint_restore, heads
from dolg_tf.training import optimizers, trainer
from dolg_tf.utils import cli
from tests import testutil

TINY = testutil.TINY_TRAIN_DOLG
DATA_FIELDS = {f.name for f in dataclasses.fields(config_lib.DataConfig)}


class TrainerTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.train_pattern, cls.validation_pattern, cls.num_classes = testutil.training_data("data")

  def _experiment(self, model=TINY, **overrides):
    data = dict(
      train_file_pattern=self.train_pattern,
      validation_file_pattern=self.validation_pattern,
      dataset_version="synthetic",
      num_classes=self.num_classes,
      image_size=32,
    )
    train_values = dict(
      batch_size=4,
      max_steps=4,
      initial_lr=0.01,
      log_every=2,
      checkpoint_every=2,
      validation_steps=2,
    )
    for name, value in overrides.items():
      (data if name in DATA_FIELDS else train_values)[name] = value
    return config_lib.ExperimentConfig(
      model=model,
      data=config_lib.DataConfig(**data),
      train=config_lib.TrainConfig(**train_values),
    )

  def _trainer(self, model, logdir, **overrides):
    return trainer.Trainer(self._experiment(model, **overrides), run_layout.RunLayout(logdir))

  def test_trains_checkpoints_and_resumes_with_optimizer_state(self):
    logdir = self.create_tempdir().full_path
    first = self._trainer(TINY, logdir)
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
    self.assertEqual(config_lib.load_config(logdir), self._experiment())
    self.assertNotEmpty(tf.io.gfile.glob(os.path.join(logdir, "train", "events.*")))
    momentum_before = [v.numpy() for v in first.optimizer.variables]

    resumed = self._trainer(TINY, logdir, max_steps=6)
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

  def test_xla_training_step_matches_the_plain_one(self):
    # Same seed, same initial weights; XLA's numerics (and the data pipeline's
    # own randomness) differ slightly, so the updates are compared by direction.
    updates = {}
    for jit_compile in (False, True):
      keras.utils.set_random_seed(0)
      run = self._trainer(
        TINY,
        self.create_tempdir().full_path,
        max_steps=2,
        jit_compile=jit_compile,
        export_at_end=False,
        validation_steps=1,
      )
      initial = np.concatenate([v.numpy().ravel() for v in run.model.trainable_variables])
      metrics = run.train()
      self.assertTrue(np.isfinite(metrics["loss"]))
      final = np.concatenate([v.numpy().ravel() for v in run.model.trainable_variables])
      updates[jit_compile] = (initial, final - initial)
    self.assertAllEqual(updates[False][0], updates[True][0])
    plain, xla = updates[False][1], updates[True][1]
    self.assertGreater(np.linalg.norm(xla), 0.0)
    cosine = np.dot(plain, xla) / (np.linalg.norm(plain) * np.linalg.norm(xla))
    self.assertGreater(cosine, 0.95)

  def test_tiny_model_learns_above_chance(self):
    logdir = self.create_tempdir().full_path
    run = self._trainer(
      TINY,
      logdir,
      max_steps=120,
      batch_size=8,
      initial_lr=0.05,
      warmup_steps=5,
      log_every=20,
      checkpoint_every=120,
      min_crop_area=0.5,
      validation_steps=0,
    )
    first_losses = []
    original_log = trainer.logging.info

    def capture(message, *args):
      line = message % args
      if line.startswith("step ") and "| loss " in line:
        first_losses.append(float(line.split("| loss ")[1].split()[0]))
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
    # A handful of validation views after 120 tiny steps: above chance on every CPU type
    # (2x chance held on AVX2 and AMX machines, 0.375 on an AVX512_BF16 one).
    self.assertGreater(metrics["validation_accuracy"], chance)

  def test_non_finite_loss_stops_without_saving_diverged_weights(self):
    logdir = self.create_tempdir().full_path
    run = self._trainer(
      TINY, logdir, initial_lr=1e30, clip_norm=0.0, max_steps=20, checkpoint_every=100
    )
    with self.assertRaisesRegex(trainer.NonFiniteLossError, "loss is (nan|inf)"):
      run.train()
    self.assertIsNone(run.manager.latest_checkpoint)

  def test_delg_trains_with_three_loss_terms(self):
    logdir = self.create_tempdir().full_path
    run = self._trainer(testutil.TINY_TRAIN_DELG, logdir, max_steps=2)
    metrics = run.train()
    for name in ("global_loss", "attention_loss", "reconstruction_loss"):
      self.assertTrue(np.isfinite(metrics[name]), name)
      self.assertGreater(metrics[name], 0.0)
    self.assertAlmostEqual(
      metrics["loss"],
      metrics["global_loss"] + metrics["attention_loss"] + 10.0 * metrics["reconstruction_loss"],
      places=3,
    )

  def test_lr_per_epoch_holds_the_rate_within_an_epoch(self):
    logdir = os.path.join(self.get_temp_dir(), "per_epoch")
    settings = dict(steps_per_epoch=2, max_steps=6, warmup_steps=2)
    per_epoch = self._trainer(TINY, logdir, lr_per_epoch=True, **settings).learning_rate
    per_step = self._trainer(TINY, logdir + "_step", **settings).learning_rate
    rates = [float(per_epoch(step)) for step in range(6)]
    self.assertEqual(rates[0], rates[1])
    self.assertEqual(rates[2], rates[3])
    self.assertEqual(rates[4], rates[5])
    # Epoch 0 of 3 with one warm-up epoch: warmup_factor * lr; epoch 2: cosine at 2/3.
    self.assertAllClose(rates[0], 0.1 * 0.01)
    self.assertAllClose(rates[4], 0.5 * 0.01 * (1 + math.cos(math.pi * 2 / 3)))
    self.assertNotEqual(float(per_step(1)), float(per_step(0)))

  def test_subcenter_margins_come_from_the_training_files(self):
    model = dataclasses.replace(TINY, head_type="subcenter_arcface", head_num_subcenters=2)
    run = self._trainer(model, os.path.join(self.get_temp_dir(), "subcenter"))
    counts = run.train_records.label_counts
    self.assertLen(counts, self.num_classes)
    self.assertEqual(int(counts.sum()), run.train_records.num_records)
    self.assertAllClose(
      run.head.class_margins.numpy(),
      heads.dynamic_margins(counts, model.head_margin, model.head_margin_max),
    )

  def test_adam_trains_with_pytorchs_update(self):
    run = self._trainer(
      TINY, os.path.join(self.get_temp_dir(), "adam"), optimizer="adam", initial_lr=1e-3
    )
    self.assertIsInstance(run.optimizer, optimizers.TorchAdam)
    before = [v.numpy().copy() for v in run.model.backbone.trainable_variables]
    metrics = run.train()
    self.assertTrue(np.isfinite(metrics["loss"]))
    after = run.model.backbone.trainable_variables
    self.assertTrue(any(not np.array_equal(b, a.numpy()) for b, a in zip(before, after)))

  def test_missing_training_files_are_reported(self):
    with self.assertRaisesRegex(FileNotFoundError, "nowhere"):
      self._trainer(TINY, "/tmp/x", train_file_pattern="/nowhere/train-*")

  def test_validation_pattern_that_matches_nothing_is_refused(self):
    with self.assertRaisesRegex(
      FileNotFoundError, r"data.validation_file_pattern matches no file: '/nowhere/val-\*'"
    ):
      self._trainer(TINY, "/tmp/x", validation_file_pattern="/nowhere/val-*")

  def test_labels_outside_num_classes_are_refused_naming_the_file(self):
    # The data has labels 0..3: with 3 classes, label 3 would silently get no class.
    with self.assertRaisesRegex(
      input_pipeline.DataError, r"/train-0000\d-of-00002: record \d+ has label 3, outside \[0, 3\)"
    ):
      self._trainer(TINY, self.create_tempdir().full_path, num_classes=3)

  def _copy_shards(self):
    folder = self.create_tempdir().full_path
    for path in glob.glob(self.train_pattern):
      shutil.copy(path, folder)
    return sorted(glob.glob(os.path.join(folder, "train-*")))

  def test_truncated_file_is_refused_naming_it_or_skipped(self):
    shards = self._copy_shards()
    with open(shards[1], "rb") as f:
      data = f.read()
    with open(shards[1], "wb") as f:
      f.write(data[: len(data) // 2])
    pattern = os.path.join(os.path.dirname(shards[1]), "train-*")
    logdir = self.create_tempdir().full_path
    with self.assertRaisesRegex(
      input_pipeline.DataError,
      f"{shards[1]}: record \\d+ at byte \\d+ of {len(data) // 2} is truncated or corrupt.*"
      "data.skip_corrupt_records=true",
    ):
      self._trainer(TINY, logdir, train_file_pattern=pattern)
    with self.assertLogs(level="WARNING") as logs:
      run = self._trainer(
        TINY, logdir, train_file_pattern=pattern, skip_corrupt_records=True, max_steps=2
      )
    self.assertIn(f"{shards[1]}: record", logs.output[0])
    self.assertIn("1 of 2 files are corrupt", logs.output[-1])
    intact = sum(1 for _ in tf.data.TFRecordDataset(shards[0]))
    self.assertBetween(run.train_records.num_records, intact, 2 * intact - 1)
    run.train()
    self.assertEqual(run.step, 2)

  def test_record_that_is_not_an_image_is_reported_with_its_id(self):
    folder = self.create_tempdir().full_path
    with tf.io.TFRecordWriter(os.path.join(folder, "train-00000-of-00001")) as writer:
      for i in range(4):
        image = gldv2.make_example(f"img{i}", b"not a jpeg", i, 8, 8)
        writer.write(image.SerializeToString())
    with self.assertRaisesRegex(
      input_pipeline.DataError,
      r"data.train_file_pattern '.*': record with image/id img\d: image/encoded is not a JPEG",
    ):
      self._trainer(
        TINY, self.create_tempdir().full_path, train_file_pattern=folder + "/train-*"
      ).train()

  def test_checkpoint_of_another_model_is_refused_naming_it(self):
    logdir = self.create_tempdir().full_path
    first = self._trainer(TINY, logdir, max_steps=2)
    first.train()
    checkpoint = first.manager.latest_checkpoint
    # As if config.json were deleted and another --embedding_dim or class count given.
    for model, overrides in (
      (TINY.replace(embedding_dim=32), {}),
      (TINY, {"num_classes": 5}),
    ):
      with self.assertRaisesRegex(
        checkpoint_restore.CheckpointMismatchError,
        f"checkpoint {checkpoint} does not fit the model of this config "
        r"\(Received incompatible tensor with shape \(16, 4\)",
      ):
        self._trainer(model, logdir, **overrides)

  def _train_command(self, logdir, checkpoint_every):
    """`python -m dolg_tf.train` on the tiny data, running (almost) forever."""
    return [
      sys.executable,
      "-m",
      "dolg_tf.train",
      f"--train_file_pattern={self.train_pattern}",
      "--dataset_version=synthetic",
      f"--num_classes={self.num_classes}",
      f"--logdir={logdir}",
      "--experiment=dolg_gldv2",
      "--config_file=" + config_lib.save_model_config(TINY, self.create_tempdir().full_path),
      "--batch_size=4",
      "--image_size=32",
      "--max_steps=100000",
      "--log_every=1",
      f"--checkpoint_every={checkpoint_every}",
      "--export_at_end=false",
    ]

  def test_killed_run_leaves_a_usable_checkpoint(self):
    logdir = self.create_tempdir().full_path
    command = self._train_command(logdir, checkpoint_every=1)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    resumed = self._trainer(TINY, logdir, max_steps=1)
    self.assertEqual(resumed.restored_from, latest)
    self.assertEqual(resumed.step, int(latest.rsplit("-", 1)[1]))

  def test_sigterm_saves_the_step_and_exits_143(self):
    logdir = self.create_tempdir().full_path
    # The only checkpoint is the one SIGTERM saves.
    command = self._train_command(logdir, checkpoint_every=100000)
    # The step lines are logged to stderr.
    status, out, err = testutil.signal_after_line(
      command, r"\bstep [2-9]\d*/100000", signal.SIGTERM
    )
    self.assertEqual(status, train.EXIT_PREEMPTED, err[-2000:])
    self.assertEqual(train.EXIT_PREEMPTED, 143)
    saved_step = int(re.search(r"SIGTERM received at step (\d+)", err).group(1))
    latest = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
    self.assertEqual(latest, os.path.join(logdir, "checkpoints", f"ckpt-{saved_step}"))
    self.assertIn(f"Stopped by SIGTERM; checkpoint: {latest}", out)
    self.assertNotIn("Traceback", err)
    self.assertFalse(os.path.exists(os.path.join(logdir, "export")))


class ResumeCheckTest(tf.test.TestCase):
  def test_a_changed_config_is_refused_listing_the_fields(self):
    layout = run_layout.RunLayout(self.create_tempdir().full_path)
    saved = config_lib.ExperimentConfig(model=TINY)
    config_lib.save_config(saved, layout.config)
    changed = config_lib.override(
      saved, "model.head_margin=0.3,model.embedding_dim=32,train.log_every=5"
    )
    with self.assertRaisesRegex(
      cli.UserError, r"model.embedding_dim: 16 -> 32; model.head_margin: 0.15 -> 0.3\)"
    ):
      train.check_resume(changed, layout)
    # Runtime settings (logging, checkpoint cadence, export) may change.
    train.check_resume(config_lib.override(saved, "train.log_every=5"), layout)
    with self.assertLogs(level="WARNING") as logs:
      train.check_resume(changed, layout, allow_config_change=True)
    self.assertLen(logs.output, 2)
    self.assertIn("model.head_margin 0.15 -> 0.3", logs.output[1])

  def test_a_new_logdir_is_not_checked(self):
    layout = run_layout.RunLayout(self.create_tempdir().full_path)
    train.check_resume(config_lib.ExperimentConfig(), layout)


if __name__ == "__main__":
  tf.test.main()
