"""Training, export and conversion under hostile conditions (issue 25): one line, nothing partial.

Full and read-only disks are small tmpfs mounts (the tests run as root); where
mounting is not permitted the same code paths are driven in-process by
injecting the write error (ENOSPC / EROFS as TensorFlow reports them). Each
command case checks the exit status, the one error line naming the folder,
file or flag, that there is no traceback, and what is (not) left behind.
Inputs are tiny: a synthetic set of 4 classes at 48 pixels and one run of the
tiny model trained for two steps (ckpt-1, ckpt-2), built once in setUpClass.
"""

import concurrent.futures
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from dolg_tf import config as config_lib
from dolg_tf import run_layout, train
from dolg_tf.convert import official_dolg, official_structure
from dolg_tf.export import versions
from dolg_tf.keras_api import keras
from dolg_tf.model import builder, checkpoint_restore
from dolg_tf.training import run_checkpoints, trainer
from dolg_tf.utils import dir_lock
from tests import testutil

TINY = testutil.TINY_TRAIN_DOLG
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()
HOLD_LOCK = (
  "import sys, time\n"
  "from dolg_tf.utils import dir_lock\n"
  "dir_lock.DirLock(sys.argv[1]).acquire()\n"
  "print('locked', flush=True)\n"
  "time.sleep(120)\n"
)
# What TensorFlow raises for a full and a read-only disk (no errno; the OS's words).
DISK_ERRORS = {
  "disk full": lambda path: tf.errors.ResourceExhaustedError(
    None, None, f"{path}; No space left on device"
  ),
  "read-only file system": lambda path: tf.errors.PermissionDeniedError(
    None, None, f"{path}; Read-only file system"
  ),
}


@contextlib.contextmanager
def tmpfs(folder: str, size_kb: int, read_only: bool = False):
  """A tmpfs of `size_kb` KiB mounted on `folder`: yields True, or False if mounting is refused."""
  os.makedirs(folder, exist_ok=True)
  options = f"size={size_kb}k" + (",ro" if read_only else "")
  try:
    mounted = (
      subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder], capture_output=True, check=False
      ).returncode
      == 0
    )
  except OSError:  # No mount command.
    mounted = False
  try:
    yield mounted
  finally:
    if mounted:
      if subprocess.run(["umount", folder], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", folder], capture_output=True, check=False)


def remount(folder: str, size_kb: int) -> None:
  subprocess.run(["mount", "-o", f"remount,size={size_kb}k", folder], check=True)


class HostileTrainExportTest(tf.test.TestCase, parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.work = os.path.join(tf.compat.v1.test.get_temp_dir(), "hostile_train_export")
    cls.train_pattern, _, cls.num_classes = testutil.training_data(os.path.join(cls.work, "data"))
    cls.run_dir = os.path.join(cls.work, "run")
    if not os.path.isdir(cls.run_dir):
      trainer.Trainer(
        cls._experiment(cls.train_pattern, cls.num_classes), run_layout.RunLayout(cls.run_dir)
      ).train()
      keras.mixed_precision.set_global_policy("float32")  # The Trainer sets it for the process.
    cls.checkpoints = os.path.join(cls.run_dir, "checkpoints")
    cls.model_file = config_lib.save_model_config(TINY, os.path.join(cls.work, "model"))

  @staticmethod
  def _experiment(pattern, num_classes, **train_values):
    values = dict(
      batch_size=4,
      max_steps=2,
      log_every=1,
      checkpoint_every=1,
      export_at_end=False,
      validate_every=0,
    )
    values.update(train_values)
    return testutil.training_experiment(TINY, pattern, num_classes, **values)

  def _copy_run(self, name: str = "run") -> str:
    target = os.path.join(self.create_tempdir().full_path, name)
    shutil.copytree(self.run_dir, target)
    return target

  def _train_args(self, logdir: str, *extra: str) -> list[str]:
    return [
      "--experiment=dolg_gldv2",
      f"--config_file={self.model_file}",
      f"--train_file_pattern={self.train_pattern}",
      "--dataset_version=synthetic",
      f"--num_classes={self.num_classes}",
      f"--logdir={logdir}",
      "--batch_size=4",
      "--image_size=32",
      "--max_steps=2",
      "--log_every=1",
      "--checkpoint_every=1",
      "--validate_every=0",
      "--export_at_end=false",
      *extra,
    ]

  def _assert_one_line_error(self, result, command: str, message: str):
    self.assertEqual(result.returncode, 2, result.stderr[-3000:])
    self.assertNotIn("Traceback", result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    self.assertRegex(last, f"^{command}: error: {message}")

  def _run_cases(self, cases):
    """cases: {name: (module, args, command, message regex)}; two at a time."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      results = {
        name: pool.submit(testutil.run_module, module, *args)
        for name, (module, args, _, _) in cases.items()
      }
    for name, (_, _, command, message) in cases.items():
      with self.subTest(name):
        self._assert_one_line_error(results[name].result(), command, message)

  def _checkpoint_files(self, logdir: str) -> list[str]:
    return sorted(os.listdir(os.path.join(logdir, "checkpoints")))

  # ------------------------------------------------------------------- full / read-only disks

  @parameterized.parameters("disk full", "read-only file system")
  def test_export_to_a_full_or_read_only_disk(self, reason):
    mount = self.create_tempdir().full_path
    base = os.path.join(mount, "export")
    with tmpfs(mount, 256, read_only=reason != "disk full") as mounted:
      if mounted:
        result = testutil.run_module(
          "dolg_tf.export.export_model", f"--logdir={self.run_dir}", f"--export_base={base}"
        )
        self._assert_one_line_error(
          result,
          "export_model",
          f"{re.escape(base)}: cannot write the export \\({reason}\\); no new version was left "
          "there$",
        )
        self.assertEqual(os.listdir(mount), [])  # No version, temporary folder or lock file.
        return
    # Mounting not permitted: the same failure injected into the SavedModel writer.
    module, name = (tf.saved_model, "save") if reason == "disk full" else (tf.io.gfile, "makedirs")
    with mock.patch.object(module, name, side_effect=DISK_ERRORS[reason](base)):
      with self.assertRaisesRegex(versions.ExportError, f"cannot write the export \\({reason}"):
        versions.export_from_checkpoint(self.run_dir, export_base=base)
    self.assertFalse(os.path.exists(base))

  def test_training_on_a_full_disk_keeps_the_earlier_checkpoints_and_resumes(self):
    mount = self.create_tempdir().full_path
    logdir = os.path.join(mount, "run")
    checkpoint_bytes = os.path.getsize(os.path.join(self.checkpoints, "ckpt-1.data-00000-of-00001"))
    # Room for ckpt-1, config and summaries, not for ckpt-2.
    with tmpfs(mount, checkpoint_bytes * 3 // 2 // 1024 + 128) as mounted:
      if not mounted:
        self._training_on_a_full_disk_in_process()
        return
      result = testutil.run_module("dolg_tf.train", *self._train_args(logdir, "--max_steps=3"))
      ckpt = os.path.join(logdir, "checkpoints", "ckpt-")
      self._assert_one_line_error(
        result,
        "train",
        f"--logdir {re.escape(logdir)}: cannot save checkpoint {re.escape(ckpt)}2 \\(disk full\\); "
        f"its unfinished files were removed; the last checkpoint is {re.escape(ckpt)}1: free space",
      )
      self.assertEqual(
        self._checkpoint_files(logdir),
        ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"],
      )
      self.assertNotIn(run_layout.TRAIN_LOCK_FILE, os.listdir(logdir))
      remount(mount, 64 * 1024)  # Space freed: the same command resumes from ckpt-1.
      result = testutil.run_module("dolg_tf.train", *self._train_args(logdir, "--max_steps=3"))
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      self.assertIn(f"Resumed from {ckpt}1 at step 1", result.stderr)
      self.assertEqual(tf.train.latest_checkpoint(os.path.dirname(ckpt)), f"{ckpt}3")

  def _training_on_a_full_disk_in_process(self):
    logdir = self.create_tempdir().full_path
    run = trainer.Trainer(
      self._experiment(self.train_pattern, self.num_classes, max_steps=3),
      run_layout.RunLayout(logdir),
    )
    real_save = run.manager.save

    def save(checkpoint_number):
      if checkpoint_number < 2:
        return real_save(checkpoint_number=checkpoint_number)
      prefix = os.path.join(logdir, "checkpoints", f"ckpt-{checkpoint_number}")
      os.makedirs(prefix + "_temp")  # What TF leaves when the disk fills.
      raise DISK_ERRORS["disk full"](prefix + "_temp/part-00000-of-00001")

    with mock.patch.object(run.manager, "save", side_effect=save):
      with self.assertRaisesRegex(
        run_checkpoints.WriteError, r"ckpt-2 \(disk full\); its unfinished files were removed"
      ):
        run.train()
    self.assertEqual(
      self._checkpoint_files(logdir), ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    )

  def test_converter_onto_a_full_disk_leaves_nothing(self):
    keras.utils.set_random_seed(5)
    config = testutil.TINY_DOLG.replace(**official_structure.OFFICIAL_INPUT)
    state = official_dolg.official_state_dict(builder.build_model(config, image_size=64))
    source = os.path.join(self.create_tempdir().full_path, "dolg.npz")
    np.savez(source, **state)
    mount = self.create_tempdir().full_path
    output = os.path.join(mount, "converted")
    with tmpfs(mount, 256) as mounted:
      if mounted:
        result = testutil.run_module(
          "dolg_tf.convert.convert_official_dolg",
          f"--checkpoint={source}",
          f"--output_dir={output}",
          "--image_scales=1",
        )
        self._assert_one_line_error(
          result,
          "convert_official_dolg",
          f"{re.escape(output)}: cannot write the converted model \\(disk full\\); nothing was "
          "written$",
        )
        self.assertEqual(os.listdir(mount), [])
        return
    output = os.path.join(self.create_tempdir().full_path, "converted")
    with mock.patch(
      "tensorflow.train.CheckpointManager.save", side_effect=DISK_ERRORS["disk full"](output)
    ):
      with self.assertRaisesRegex(OSError, "cannot write the converted model \\(disk full\\)"):
        official_dolg.convert_official_checkpoint(source, output, image_scales=[1.0])
    self.assertEqual(glob.glob(output + "*"), [])

  # ------------------------------------------------------------ damaged run folders, flags

  def test_damaged_run_folders_and_bad_flags_are_one_line(self):
    truncated_config = self._copy_run()
    config_path = os.path.join(truncated_config, config_lib.CONFIG_FILENAME)
    with open(config_path, "rb") as f:
      config_bytes = f.read()[:100]
    with open(config_path, "wb") as f:
      f.write(config_bytes)
    no_config = self._copy_run()
    os.remove(os.path.join(no_config, config_lib.CONFIG_FILENAME))
    truncated_data = self._copy_run()
    data = os.path.join(truncated_data, "checkpoints", "ckpt-2.data-00000-of-00001")
    os.truncate(data, 1000)
    truncated_index = self._copy_run()
    os.truncate(os.path.join(truncated_index, "checkpoints", "ckpt-2.index"), 100)
    ckpt = lambda run, n: re.escape(os.path.join(run, "checkpoints", f"ckpt-{n}"))
    unknown = "; the config the run's checkpoints were trained with is unknown: use a new --logdir"
    before = {run: self._checkpoint_files(run) for run in (truncated_data, truncated_index)}
    cases = {
      "truncated_config": (
        "dolg_tf.train",
        self._train_args(truncated_config, "--max_steps=3"),
        "train",
        f"{re.escape(config_path)}: not a JSON/YAML config \\(.*\\){re.escape(unknown)}",
      ),
      "checkpoints_without_config": (
        "dolg_tf.train",
        self._train_args(no_config, "--max_steps=3", "--embedding_dim=32"),
        "train",
        f"{re.escape(no_config)}/config.json: missing, but {re.escape(no_config)}/checkpoints "
        f"holds checkpoints{re.escape(unknown)}",
      ),
      "train_truncated_data": (
        "dolg_tf.train",
        self._train_args(truncated_data),
        "train",
        f"checkpoint {ckpt(truncated_data, 2)} is damaged \\(.*truncated\\); the previous "
        f"checkpoint is {ckpt(truncated_data, 1)}: to resume from it, delete "
        f"{ckpt(truncated_data, 2)}.index",
      ),
      "export_truncated_data": (
        "dolg_tf.export.export_model",
        [f"--logdir={truncated_data}"],
        "export_model",
        f"checkpoint {ckpt(truncated_data, 2)} is damaged \\(.*truncated\\); the previous "
        f"checkpoint is {ckpt(truncated_data, 1)}: export it with "
        f"--checkpoint={ckpt(truncated_data, 1)}$",
      ),
      "export_truncated_index": (
        "dolg_tf.export.export_model",
        [f"--logdir={truncated_index}"],
        "export_model",
        f"checkpoint {ckpt(truncated_index, 2)} is damaged \\(.*sstable.*\\); the previous "
        f"checkpoint is {ckpt(truncated_index, 1)}",
      ),
      "negative_version": (
        "dolg_tf.export.export_model",
        [f"--logdir={self.run_dir}", "--version=-3"],
        "export_model",
        "--version: -3 is negative; TF Serving loads only version folders named by a "
        "non-negative integer",
      ),
    }
    self._run_cases(cases)
    with open(config_path, "rb") as f:
      self.assertEqual(f.read(), config_bytes)  # Left as it was.
    self.assertFalse(os.path.exists(os.path.join(no_config, config_lib.CONFIG_FILENAME)))
    for run, files in before.items():
      self.assertEqual(self._checkpoint_files(run), files)
      self.assertFalse(os.path.exists(os.path.join(run, "export")))
    self.assertFalse(os.path.exists(os.path.join(self.run_dir, "export")))

  def test_an_oversized_config_is_not_read(self):
    path = os.path.join(self.create_tempdir().full_path, config_lib.CONFIG_FILENAME)
    with open(path, "wb") as f:
      f.truncate(config_lib.MAX_CONFIG_BYTES + 1)
    with self.assertRaisesRegex(
      config_lib.ConfigError, f"^{re.escape(path)}: 4194305 bytes, more than a config may have"
    ):
      config_lib.load_config_dict(path)

  @parameterized.parameters(
    (None, True),
    ({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["a"], "worker": ["b"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["a"], "worker": ["b"]}, "task": {"type": "chief", "index": 0}}, True),
  )
  def test_only_the_chief_of_a_multi_worker_run_locks_the_logdir(self, tf_config, chief):
    env = {"TF_CONFIG": json.dumps(tf_config)} if tf_config else {}
    with mock.patch.dict(os.environ, env, clear=False):
      if tf_config is None:
        os.environ.pop("TF_CONFIG", None)
      self.assertEqual(train.is_chief_task(), chief)
      layout = run_layout.RunLayout(self.create_tempdir().full_path)
      lock = train.lock_logdir(layout)
      self.assertEqual((lock.held, os.path.exists(layout.lock)), (chief, chief))
      lock.release()

  def test_deleting_a_damaged_checkpoint_resumes_from_the_previous_one(self):
    logdir = self._copy_run()
    prefix = os.path.join(logdir, "checkpoints", "ckpt-")
    os.truncate(prefix + "2.data-00000-of-00001", 1000)
    os.remove(prefix + "2.index")
    with self.assertLogs(level="WARNING") as logs:
      run = trainer.Trainer(
        self._experiment(self.train_pattern, self.num_classes, max_steps=3),
        run_layout.RunLayout(logdir),
      )
    self.assertEqual(run.restored_from, prefix + "1")
    self.assertEqual(run.step, 1)
    self.assertIn(f"{prefix}2 is listed as the latest checkpoint but its files are", logs.output[0])
    _, model = checkpoint_restore.restore_model(logdir)  # Export takes ckpt-1 too.
    self.assertLen(model.variables, len(run.model.variables))

  # ----------------------------------------------------------------------------- locks

  def test_a_second_training_run_or_export_of_a_folder_is_refused(self):
    logdir = self._copy_run()
    export_base = os.path.join(logdir, "export")
    os.makedirs(export_base)
    before = self._checkpoint_files(logdir)
    holder = f"pid {os.getpid()} on {re.escape(HOST)}"
    with (
      dir_lock.DirLock(run_layout.RunLayout(logdir).lock),
      dir_lock.DirLock(os.path.join(export_base, versions.EXPORT_LOCK_FILE)),
    ):
      self._run_cases(
        {
          "train": (
            "dolg_tf.train",
            self._train_args(logdir, "--max_steps=3"),
            "train",
            f"--logdir {re.escape(logdir)}: in use by another training run \\({holder}\\); "
            "wait for it to finish or use another --logdir$",
          ),
          "export": (
            "dolg_tf.export.export_model",
            [f"--logdir={logdir}"],
            "export_model",
            f"{re.escape(export_base)}: another export is writing here \\({holder}\\); wait for "
            "it to finish$",
          ),
        }
      )
    self.assertEqual(self._checkpoint_files(logdir), before)
    self.assertEqual(os.listdir(export_base), [])  # No version; our lock file removed.
    self.assertNotIn(run_layout.TRAIN_LOCK_FILE, os.listdir(logdir))

  def test_the_lock_module_loads_without_tensorflow(self):
    code = "import sys\nimport dolg_tf.utils.dir_lock\nprint('tensorflow' in sys.modules)"
    result = subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      env=dict(os.environ, PYTHONPATH=REPO_ROOT),
      check=False,
    )
    self.assertEqual((result.returncode, result.stdout.strip()), (0, "False"), result.stderr)

  def test_the_lock_of_a_killed_process_is_not_stale(self):
    path = os.path.join(self.create_tempdir().full_path, ".dolg_train.lock")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    process = subprocess.Popen(
      [sys.executable, "-c", HOLD_LOCK, path], stdout=subprocess.PIPE, text=True, env=env
    )
    self.addCleanup(process.wait)
    self.addCleanup(process.kill)
    self.assertEqual(process.stdout.readline().strip(), "locked")
    with self.assertRaises(dir_lock.LockBusyError) as busy:
      dir_lock.DirLock(path).acquire()
    self.assertEqual(busy.exception.holder, f"pid {process.pid} on {HOST}")
    process.send_signal(signal.SIGKILL)
    process.wait()
    self.assertTrue(os.path.exists(path))  # The file is left, the lock is not.
    with dir_lock.DirLock(path) as lock:
      self.assertTrue(lock.held)
      with open(path) as f:
        self.assertEqual(f.read(), f"{dir_lock.holder_text()}\n")
    self.assertFalse(os.path.exists(path))

  # ------------------------------------------------------------------------ SIGTERM, NaN

  def test_sigterm_stops_after_the_current_step(self):
    logdir = self.create_tempdir().full_path
    # Steps are logged (and, before issue 25, SIGTERM was checked) every 100000 steps.
    args = self._train_args(
      logdir, "--max_steps=1000000", "--log_every=100000", "--checkpoint_every=100000"
    )
    status, out, err = testutil.signal_after_line(
      [sys.executable, "-m", "dolg_tf.train", *args], "Training dolg R26", signal.SIGTERM
    )
    self.assertEqual(status, train.EXIT_PREEMPTED, err[-2000:])
    self.assertNotIn("Traceback", err)
    saved_step = int(re.search(r"SIGTERM received at step (\d+)", err).group(1))
    self.assertLess(saved_step, 100000)
    latest = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
    self.assertEqual(latest, os.path.join(logdir, "checkpoints", f"ckpt-{saved_step}"))
    self.assertIn(f"Stopped by SIGTERM; checkpoint: {latest}", out)
    self.assertNotIn(run_layout.TRAIN_LOCK_FILE, os.listdir(logdir))

  def test_a_checkpoint_of_nan_weights_is_not_exported(self):
    logdir = self._copy_run()
    _, model = checkpoint_restore.restore_model(logdir)
    for variable in model.variables:
      variable.assign(tf.fill(variable.shape, float("nan")))
    prefix = tf.train.Checkpoint(model=model).save(os.path.join(logdir, "nan", "ckpt"))
    result = testutil.run_module(
      "dolg_tf.export.export_model", f"--logdir={logdir}", f"--checkpoint={prefix}"
    )
    self._assert_one_line_error(
      result,
      "export_model",
      f"checkpoint {re.escape(prefix)}: the model's global descriptor of a fixed 64x64 test "
      r"image is degenerate \(16 of its 16 values are NaN or inf\); its weights are damaged",
    )
    self.assertFalse(os.path.exists(os.path.join(logdir, "export")))

  def test_a_model_of_zero_weights_is_not_exported(self):
    _, model = checkpoint_restore.restore_model(self.run_dir)
    for variable in model.variables:
      variable.assign(tf.zeros(variable.shape, variable.dtype))
    base = os.path.join(self.create_tempdir().full_path, "export")
    with self.assertRaisesRegex(
      versions.ExportError, r"^ckpt-0: the model's global descriptor .* degenerate \(all 16"
    ):
      versions.export_saved_model(model, TINY, base, source="ckpt-0")
    self.assertFalse(os.path.exists(base))
    self.assertIsNone(versions.probe_problem(np.eye(1, 16)[0]))
    self.assertRegex(versions.probe_problem(np.full(16, 1e-9)), r"L2 norm is 4e-09, not 1")


if __name__ == "__main__":
  tf.test.main()
