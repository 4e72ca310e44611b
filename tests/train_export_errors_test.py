"""`dolg-train` and `dolg-export` on bad data, runs and checkpoints: one line, exit status 2.

Each case runs the command (`python -m <module>`) in a subprocess and checks
its exit status and that stderr ends with the one line `<command>: error: ...`
naming the file or field, without a traceback. Inputs are tiny: a synthetic set
of 4 classes at 48 pixels and one run of the tiny model trained for one step
(in-process, in setUpClass). Cases run two at a time.
"""

import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf import run_layout
from dolg_tf.training import trainer
from tests import testutil

TINY = testutil.TINY_TRAIN_DOLG


def _run(module: str, args: list[str]) -> subprocess.CompletedProcess:
  return testutil.run_module(module, *args)


class TrainExportErrorsTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.work = os.path.join(tf.compat.v1.test.get_temp_dir(), "train_export_errors")
    data = os.path.join(cls.work, "data")
    cls.train_pattern, _, cls.num_classes = testutil.training_data(data)
    # A truncated copy of the training set.
    corrupt = os.path.join(cls.work, "corrupt")
    os.makedirs(corrupt, exist_ok=True)
    shards = sorted(glob.glob(cls.train_pattern))
    for path in shards:
      shutil.copy(path, corrupt)
    cls.truncated = os.path.join(corrupt, os.path.basename(shards[0]))
    with open(cls.truncated, "rb") as f:
      payload = f.read()
    with open(cls.truncated, "wb") as f:
      f.write(payload[:-10])
    cls.corrupt_pattern = os.path.join(corrupt, "train-*")
    # One trained run (config.json + checkpoints/ckpt-1).
    cls.run_dir = os.path.join(cls.work, "run")
    experiment = testutil.training_experiment(
      TINY,
      cls.train_pattern,
      cls.num_classes,
      batch_size=4,
      max_steps=1,
      log_every=1,
      export_at_end=False,
      validate_every=0,
    )
    trainer.Trainer(experiment, run_layout.RunLayout(cls.run_dir)).train()
    cls.checkpoint = tf.train.latest_checkpoint(os.path.join(cls.run_dir, "checkpoints"))
    cls.model_file = config_lib.save_model_config(TINY, os.path.join(cls.work, "model"))

  def _copy_run(self, name: str) -> str:
    target = os.path.join(self.create_tempdir().full_path, name)
    shutil.copytree(self.run_dir, target)
    return target

  def _train_args(self, logdir: str, pattern: str, *extra: str) -> list[str]:
    return [
      "--experiment=dolg_gldv2",
      f"--config_file={self.model_file}",
      f"--train_file_pattern={pattern}",
      "--dataset_version=synthetic",
      f"--num_classes={self.num_classes}",
      f"--logdir={logdir}",
      "--batch_size=4",
      "--image_size=32",
      "--max_steps=1",
      "--export_at_end=false",
      *extra,
    ]

  def _assert_one_line_errors(self, cases):
    """cases: {name: (module, args, command, message regex)}; run two at a time."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      results = {
        name: pool.submit(_run, module, args) for name, (module, args, _, _) in cases.items()
      }
    for name, (_, _, command, message) in cases.items():
      result = results[name].result()
      with self.subTest(name):
        self.assertEqual(result.returncode, 2, f"{name}: {result.stderr[-3000:]}")
        self.assertNotIn("Traceback", result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        self.assertRegex(last, f"^{command}: error: .*{message}")

  def test_train_errors(self):
    # One run folder per case: the cases run two at a time, and a run folder takes one run.
    logdirs = [self.create_tempdir().full_path for _ in range(3)]
    mismatched = self._copy_run("mismatched")
    os.remove(os.path.join(mismatched, config_lib.CONFIG_FILENAME))
    no_checkpoint = self.create_tempdir().full_path
    train_cases = {
      "no_validation_file": (
        self._train_args(
          logdirs[0], self.train_pattern, f"--validation_file_pattern={logdirs[0]}/v-*"
        ),
        f"data.validation_file_pattern matches no file: '{re.escape(logdirs[0])}/v-\\*'",
      ),
      "label_outside_num_classes": (
        self._train_args(logdirs[1], self.train_pattern, "--num_classes=2"),
        r"/train-0000\d-of-00002: record \d+ has label [23], outside \[0, 2\)",
      ),
      "truncated_file": (
        self._train_args(logdirs[2], self.corrupt_pattern),
        f"{re.escape(self.truncated)}: record \\d+ at byte \\d+ of \\d+ is truncated or corrupt",
      ),
      # config.json deleted, then another --embedding_dim (allowed): the checkpoint no longer fits.
      "checkpoint_of_another_model": (
        self._train_args(
          mismatched,
          self.train_pattern,
          "--embedding_dim=32",
          "--max_steps=2",
          "--allow_config_change",
        ),
        f"checkpoint {re.escape(mismatched)}/checkpoints/ckpt-1 does not fit the model",
      ),
      "export_only_without_checkpoint": (
        self._train_args(no_checkpoint, self.train_pattern, "--export_only"),
        f"--export_only: no checkpoint in {re.escape(no_checkpoint)}/checkpoints",
      ),
    }
    self._assert_one_line_errors(
      {
        name: ("dolg_tf.train", args, "train", message)
        for name, (args, message) in train_cases.items()
      }
    )
    self.assertEmpty(glob.glob(os.path.join(no_checkpoint, "export")))

  def test_skip_corrupt_records_trains_on_the_rest(self):
    logdir = self.create_tempdir().full_path
    result = _run(
      "dolg_tf.train",
      self._train_args(logdir, self.corrupt_pattern, "--skip_corrupt_records", "--max_steps=2"),
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn(f"{self.truncated}: record", result.stderr)
    self.assertIn("1 of 2 files are corrupt", result.stderr)
    self.assertEqual(
      tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")),
      os.path.join(logdir, "checkpoints", "ckpt-2"),
    )

  def test_export_errors(self):
    work = self.create_tempdir().full_path
    other_model = self._copy_run("other_model")
    config_path = os.path.join(other_model, config_lib.CONFIG_FILENAME)
    with open(config_path) as f:
      saved = json.load(f)
    saved["model"]["embedding_dim"] = 32
    with open(config_path, "w") as f:
      json.dump(saved, f)
    version_taken = self._copy_run("version_taken")
    os.makedirs(os.path.join(version_taken, "export", "1"))
    no_config = self._copy_run("no_config")
    os.remove(os.path.join(no_config, config_lib.CONFIG_FILENAME))
    export_cases = {
      "missing_logdir": ([f"--logdir={work}/nothing"], f"{re.escape(work)}/nothing"),
      "no_config": ([f"--logdir={no_config}"], f"{re.escape(no_config)}"),
      "missing_checkpoint": (
        [f"--logdir={self.run_dir}", f"--checkpoint={work}/ckpt-7"],
        f"--checkpoint: no checkpoint {re.escape(work)}/ckpt-7",
      ),
      "override_not_key_value": (
        [f"--logdir={self.run_dir}", "--params_override=export.max_image_size"],
        "--params_override: expected key=value",
      ),
      "version_exists": (
        [f"--logdir={version_taken}", "--version=1"],
        f"export version already exists: {re.escape(version_taken)}/export/1",
      ),
      "checkpoint_of_another_model": (
        [f"--logdir={other_model}"],
        f"checkpoint {re.escape(other_model)}/checkpoints/ckpt-1 does not fit the model",
      ),
    }
    self._assert_one_line_errors(
      {
        name: ("dolg_tf.export.export_model", args, "export_model", message)
        for name, (args, message) in export_cases.items()
      }
    )
    self.assertEqual(os.listdir(os.path.join(version_taken, "export")), ["1"])
    self.assertFalse(os.path.exists(os.path.join(other_model, "export")))


if __name__ == "__main__":
  tf.test.main()
