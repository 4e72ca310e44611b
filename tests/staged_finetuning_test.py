"""Tests for staged fine-tuning: train.freeze_backbone_steps, then the whole network."""

import numpy as np
import tensorflow as tf

from dolg_tf import run_layout
from dolg_tf.training import trainer
from tests import testutil


class StagedFinetuningTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    testutil.log_absl_info(self)

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.train_pattern, _, cls.num_classes = testutil.training_data(
      "staged_finetuning_data", views_per_class=4, num_shards=1
    )

  def _trainer(self, logdir, **train_values):
    experiment = testutil.training_experiment(
      testutil.TINY_TRAIN_DOLG,
      self.train_pattern,
      self.num_classes,
      batch_size=4,
      log_every=1,
      checkpoint_every=100,
      export_at_end=False,
      **train_values,
    )
    return trainer.Trainer(experiment, run_layout.RunLayout(logdir))

  @staticmethod
  def _values(variables):
    return {v.name: v.numpy().copy() for v in variables}

  def _changed(self, before, variables):
    return {v.name for v in variables if not np.array_equal(before[v.name], v.numpy())}

  def test_the_backbone_and_its_statistics_stay_until_the_step_then_train(self):
    logdir = self.create_tempdir().full_path
    run = self._trainer(logdir, max_steps=2, freeze_backbone_steps=2)
    backbone = run.model.backbone
    others = [v for v in run.model.trainable_variables if not _is_in(v, backbone.variables)]
    backbone_before, others_before = self._values(backbone.variables), self._values(others)
    self.assertTrue(any("moving_mean" in name for name in backbone_before))
    run.train()
    self.assertTrue(run.frozen_backbone)
    # Weights and BatchNorm moving statistics: untouched; the branches trained.
    self.assertEmpty(self._changed(backbone_before, backbone.variables))
    self.assertNotEmpty(self._changed(others_before, others))

    resumed = self._trainer(logdir, max_steps=4, freeze_backbone_steps=2)
    self.assertEqual(resumed.step, 2)
    before = self._values(resumed.model.backbone.variables)
    resumed.train()
    self.assertFalse(resumed.frozen_backbone)
    changed = self._changed(before, resumed.model.backbone.variables)
    self.assertTrue(any("kernel" in name for name in changed), changed)
    self.assertTrue(any("moving_mean" in name for name in changed), changed)

  def test_one_run_unfreezes_at_the_step(self):
    run = self._trainer(self.create_tempdir().full_path, max_steps=3, freeze_backbone_steps=1)
    before = self._values(run.model.backbone.trainable_variables)
    with self.assertLogs(level="INFO") as logs:
      run.train()
    self.assertIn(
      "step 1: the backbone trains from here on (unfrozen)", [r.getMessage() for r in logs.records]
    )
    self.assertNotEmpty(self._changed(before, run.model.backbone.trainable_variables))


def _is_in(variable, variables) -> bool:
  return any(variable is v for v in variables)


if __name__ == "__main__":
  tf.test.main()
