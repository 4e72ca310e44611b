"""Tests for dolg_tf.training.divergence and the trainer's stop on a diverged run."""

import glob
import math
import os

import numpy as np
import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf import experiments, run_layout, train
from dolg_tf.data import gldv2
from dolg_tf.training import divergence, trainer
from tests import testutil

TINY = testutil.TINY_TRAIN_DOLG


class MonitorTest(tf.test.TestCase):
  def test_a_non_finite_loss_stops_at_once_naming_the_last_finite_step(self):
    monitor = divergence.DivergenceMonitor(4, warmup_steps=0, window=0, margin=0.25)
    monitor.observe(1, 1.5, correct=2, examples=8)
    monitor.observe(2, 1.25, correct=4, examples=8)
    for loss in (math.nan, math.inf):
      with self.assertRaises(divergence.NonFiniteLossError) as caught:
        monitor.observe(3, loss, correct=0, examples=8)
      self.assertEqual(caught.exception.step, 3)
      self.assertEqual(caught.exception.last_good, divergence.LastGood(2, 1.25, 0.5))
      self.assertEqual(
        str(caught.exception),
        f"step 3: the loss is {loss} (last finite loss at step 2)",
      )

  def test_the_chance_window_counts_steps_after_the_warm_up_only(self):
    # 4 classes, margin 0.5: 'at chance' is an accuracy <= 1.5 / 4 = 0.375.
    monitor = divergence.DivergenceMonitor(4, warmup_steps=2, window=3, margin=0.5)
    self.assertEqual(monitor.threshold, 0.375)
    monitor.observe(1, 1.4, correct=0, examples=8)  # warm-up: not counted
    monitor.observe(2, 1.4, correct=0, examples=8)
    monitor.observe(3, 1.4, correct=2, examples=8)
    monitor.observe(4, 1.4, correct=2, examples=8)  # the window is not full yet
    # Steps 3-5: 2 + 2 + 3 = 7 of 24 = 0.2917 <= 0.375.
    with self.assertRaisesRegex(
      divergence.StuckAtChanceError,
      r"^step 5: accuracy 0.292 over 3 steps is at chance \(1/4\)$",
    ):
      monitor.observe(5, 1.4, correct=3, examples=8)

  def test_a_window_above_the_limit_or_no_window_never_stops(self):
    monitor = divergence.DivergenceMonitor(4, warmup_steps=0, window=3, margin=0.5)
    # 3 + 3 + 4 = 10 of 24 = 0.4167 > 0.375, then a sliding window 3 + 4 + 3 = 0.4167.
    for step, correct in enumerate((3, 3, 4, 3), start=1):
      monitor.observe(step, 1.0, correct=correct, examples=8)
    off = divergence.DivergenceMonitor(4, warmup_steps=0, window=0, margin=0.5)
    for step in range(1, 50):
      off.observe(step, 1.4, correct=0, examples=8)

  def test_the_window_is_at_least_the_minimum_epochs(self):
    self.assertEqual(divergence.window_steps(1000, 2.0, 24), 1000)
    self.assertEqual(divergence.window_steps(1000, 2.0, 24_708), 49_416)  # GLDv2-clean, batch 64
    self.assertEqual(divergence.window_steps(8, 0.0, 4), 8)
    self.assertEqual(divergence.window_steps(0, 2.0, 24), 0)
    self.assertEqual(divergence.chance_threshold(16, 0.25), 0.078125)

  def test_the_defaults_do_not_fire_during_the_demo(self):
    # The demo's accuracy over its first steps after the warm-up is about 1.3x chance
    # (runs/demo: 0.080 at steps 21-60, 0.092 at 61-80, 0.16 at 120; chance 1/16): the
    # window is longer than the whole demo.
    for name in ("dolg_synthetic", "delg_synthetic"):
      config = experiments.get(name)
      steps_per_epoch = (
        config.data.synthetic_classes * config.data.synthetic_views // (config.train.batch_size)
      )
      window = divergence.window_steps(
        config.train.chance_window_steps, config.train.chance_window_min_epochs, steps_per_epoch
      )
      self.assertGreater(window, config.train.max_steps - config.train.warmup_steps, name)

  def test_advice_points_to_the_section_on_the_cause(self):
    nan = divergence.NonFiniteLossError("step 3: the loss is nan", 3)
    weights = divergence.NonFiniteWeightsError("step 4: the weights are NaN or inf", 4)
    stuck = divergence.StuckAtChanceError("step 9: ...", 9)
    for error in (nan, weights):
      self.assertEqual(
        divergence.advice(error),
        "see docs/CONVERGENCE.md#nan-or-inf-loss",
      )
    self.assertEqual(
      divergence.advice(stuck),
      "see docs/CONVERGENCE.md#stuck-at-chance",
    )

  def test_the_sections_named_exist_in_the_docs(self):
    with open(os.path.join(os.path.dirname(__file__), "..", divergence.DOCS)) as f:
      headings = [line.lstrip("#").strip() for line in f if line.startswith("#")]
    anchors = {"-".join(h.lower().replace("/", "").split()) for h in headings}
    for section in divergence.DOCS_SECTIONS.values():
      self.assertIn(section, anchors)

  def test_the_stop_message_is_short_and_names_the_checkpoint_kept(self):
    monitor = divergence.DivergenceMonitor(16, warmup_steps=50, window=1000, margin=0.25)
    monitor.observe(36, 2.5, correct=1, examples=64)
    with self.assertRaises(divergence.NonFiniteLossError) as nan:
      monitor.observe(37, math.nan, correct=0, examples=64)
    stuck = divergence.DivergenceMonitor(16, warmup_steps=50, window=1000, margin=0.25)
    with self.assertRaises(divergence.StuckAtChanceError) as chance:
      for step in range(1, 1251):
        stuck.observe(step, 2.7726, correct=4, examples=64)
    checkpoint = "runs/my_photos/checkpoints/ckpt-1200"
    cases = {
      nan.exception: "training diverged at step 37: the loss is nan (last finite loss at step "
      f"36); checkpoint kept: {checkpoint}; see docs/CONVERGENCE.md#nan-or-inf-loss",
      chance.exception: "training diverged at step 1050: accuracy 0.062 over 1000 steps is at "
      f"chance (1/16); checkpoint kept: {checkpoint}; see "
      "docs/CONVERGENCE.md#stuck-at-chance",
    }
    for error, expected in cases.items():
      advice = divergence.advice(error)
      message = divergence.stop_message(error, checkpoint, "runs/my_photos", advice)
      self.assertEqual(message, expected)
      # dolg-train prints it after 'dolg-train: error: '.
      self.assertLessEqual(len("dolg-train: error: " + message), 200, message)
    self.assertEqual(
      divergence.stop_message(nan.exception, None, "runs/r", "see x"),
      "training diverged at step 37: the loss is nan (last finite loss at step 36); "
      "no checkpoint in runs/r; see x",
    )


class TrainerDivergenceTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.train_pattern, _, cls.num_classes = testutil.training_data("divergence_data")

  def _experiment(self, pattern=None, **train_values):
    values = dict(batch_size=4, max_steps=4, initial_lr=0.01, log_every=2, checkpoint_every=2)
    values.update(train_values)
    return testutil.training_experiment(
      TINY, pattern or self.train_pattern, self.num_classes, export_at_end=False, **values
    )

  def _trainer(self, logdir, pattern=None, **train_values):
    return trainer.Trainer(self._experiment(pattern, **train_values), run_layout.RunLayout(logdir))

  def _poison_before_step(self, run, step):
    """Makes the margin head's weights NaN just before step `step` runs."""
    loop = run._make_train_loop()

    def poisoned(iterator, num_steps):
      if run.step == step - 1:
        kernel = run.head.trainable_variables[0]
        kernel.assign(tf.fill(kernel.shape, math.nan))
      return loop(iterator, num_steps)

    run._train_step_fn = poisoned

  def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(self):
    logdir = self.create_tempdir().full_path
    run = self._trainer(logdir, max_steps=20, log_every=2, checkpoint_every=2)
    self._poison_before_step(run, 3)
    with self.assertRaises(trainer.NonFiniteLossError) as caught:
      run.train()
    kept = os.path.join(logdir, "checkpoints", "ckpt-2")
    message = str(caught.exception)
    self.assertRegex(
      message,
      rf"^training diverged at step 3: the loss is nan \(last finite loss at step 2\); "
      rf"checkpoint kept: {kept}; see docs/CONVERGENCE.md#nan-or-inf-loss$",
    )
    self.assertEqual(run.step, 3)
    self.assertEqual(tf.train.latest_checkpoint(os.path.dirname(kept)), kept)
    self.assertEqual(
      sorted(os.path.basename(p) for p in glob.glob(os.path.join(logdir, "checkpoints", "*"))),
      ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"],
    )
    resumed = self._trainer(logdir)
    self.assertEqual((resumed.restored_from, resumed.step), (kept, 2))
    for variable in resumed.model.variables + resumed.head.variables:
      self.assertTrue(np.all(np.isfinite(variable.numpy())), variable.name)

  def test_non_finite_weights_are_not_saved(self):
    logdir = self.create_tempdir().full_path
    run = self._trainer(logdir)
    variable = run.model.trainable_variables[0]
    variable.assign(tf.fill(variable.shape, math.inf))
    with self.assertRaisesRegex(
      divergence.NonFiniteWeightsError,
      r"^training diverged at step 0: the weights are NaN or inf \(no finite loss before\); "
      rf"no checkpoint in {logdir}; see docs/CONVERGENCE.md#nan-or-inf-loss$",
    ):
      run.save_checkpoint()
    self.assertEmpty(glob.glob(os.path.join(logdir, "checkpoints", "ckpt-*")))

  def _shuffled_labels(self) -> str:
    """The training records with labels drawn at random (nothing to learn)."""
    folder = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    path = os.path.join(folder, "train-00000-of-00001")
    with tf.io.TFRecordWriter(path) as writer:
      for raw in tf.data.TFRecordDataset(sorted(glob.glob(self.train_pattern))):
        example = tf.train.Example.FromString(raw.numpy())
        label = example.features.feature[gldv2.LABEL_KEY].int64_list
        label.value[0] = int(rng.integers(self.num_classes))
        writer.write(example.SerializeToString())
    return path

  def test_accuracy_stuck_at_chance_stops_with_a_small_window(self):
    logdir = self.create_tempdir().full_path
    run = self._trainer(
      logdir,
      self._shuffled_labels(),
      batch_size=8,
      max_steps=60,
      log_every=5,
      checkpoint_every=5,
      warmup_steps=2,
      chance_window_steps=8,
      chance_window_min_epochs=0.0,
      chance_margin=0.5,
    )
    with self.assertRaises(divergence.StuckAtChanceError) as caught:
      run.train()
    message = str(caught.exception)
    self.assertRegex(
      message,
      r"^training diverged at step (\d+): accuracy 0\.\d{3} over 8 steps is at chance "
      r"\(1/4\); checkpoint kept: .*; see docs/CONVERGENCE.md#stuck-at-chance$",
    )
    step = caught.exception.step
    self.assertBetween(step, 2 + 8, 59)
    latest = run.latest_checkpoint()
    self.assertEqual(latest, os.path.join(logdir, "checkpoints", f"ckpt-{(step - 1) // 5 * 5}"))
    self.assertIn(f"; checkpoint kept: {latest};", message)

  def test_the_default_settings_do_not_stop_a_normal_tiny_run(self):
    run = self._trainer(self.create_tempdir().full_path, max_steps=6)
    self.assertEqual(run.monitor.window, 1000)
    metrics = run.train()
    self.assertEqual(run.step, 6)
    self.assertTrue(np.isfinite(metrics["loss"]))


class CommandTest(tf.test.TestCase):
  def test_dolg_train_exits_1_with_one_line_and_the_checkpoint_kept(self):
    pattern, _, num_classes = testutil.training_data(
      self.create_tempdir().full_path, views_per_class=4, num_shards=1
    )
    logdir = self.create_tempdir().full_path
    experiment = testutil.training_experiment(
      TINY, pattern, num_classes, batch_size=4, max_steps=2, log_every=2, export_at_end=False
    )
    trainer.Trainer(experiment, run_layout.RunLayout(logdir)).train()
    kept = os.path.join(logdir, "checkpoints", "ckpt-2")
    result = testutil.run_module(
      "dolg_tf.train",
      f"--logdir={logdir}",
      "--experiment=dolg_gldv2",
      "--config_file=" + config_lib.save_model_config(TINY, self.create_tempdir().full_path),
      f"--train_file_pattern={pattern}",
      "--dataset_version=synthetic",
      f"--num_classes={num_classes}",
      "--image_size=32",
      "--batch_size=4",
      "--max_steps=30",
      "--log_every=10",
      "--checkpoint_every=100",
      "--initial_lr=1e30",
      "--allow_config_change",
    )
    self.assertEqual(result.returncode, train.EXIT_DIVERGED, result.stderr[-3000:])
    self.assertEqual(train.EXIT_DIVERGED, 1)
    self.assertNotIn("Traceback", result.stderr)
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    self.assertLen(errors, 1, result.stderr[-3000:])
    self.assertEqual(result.stderr.strip().splitlines()[-1], errors[0])
    self.assertRegex(
      errors[0],
      r"^train: error: training diverged at step \d+: the (loss|weights) (is|are) (nan|inf|NaN)"
      rf".*; checkpoint kept: {kept}; see docs/CONVERGENCE.md#nan-or-inf-loss$",
    )
    self.assertLessEqual(len(errors[0]), 200 + len(kept), errors[0])
    self.assertEqual(tf.train.latest_checkpoint(os.path.dirname(kept)), kept)
    self.assertFalse(os.path.exists(os.path.join(logdir, "export")))
    self.assertNotIn("SavedModel", result.stdout)


if __name__ == "__main__":
  tf.test.main()
