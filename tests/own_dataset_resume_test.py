"""Tests that dolg-build-dataset resumes an interrupted build (dataset_writer's done records).

A build of a folder of class folders is stopped after some shards, in process
(an exception from the shard writer) and for real (the command killed with
SIGKILL once its first shard is done); the rerun must keep the finished shards
(same inode and mtime, the shard writer not called for them), write only the
others, and leave a folder byte for byte equal to an uninterrupted build
(failures.csv of a corrupt image included). A changed plan rewrites everything.
"""

import os
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.data import dataset_config, dataset_writer
from dolg_tf.utils import files as file_utils

# Kills the build in a subprocess: every image takes 0.3 s, so that the test
# can SIGKILL it after its first shard is done and before the last one.
SLOW_BUILD = """
import sys, time
from dolg_tf.data import build_image_dataset, image_codec
prepare = image_codec.prepare_task
def slow(task):
  time.sleep(0.3)
  return prepare(task)
image_codec.prepare_task = slow
sys.argv = ["build_image_dataset"] + sys.argv[1:]
build_image_dataset.run()
"""
TRAIN_SHARDS = [f"train-0000{i}-of-00003" for i in range(3)]
VALIDATION_SHARDS = [f"validation-0000{i}-of-00002" for i in range(2)]


def _save(path, seed, fmt="JPEG"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.random.default_rng(seed).integers(0, 256, [12, 16, 3], dtype=np.uint8)
  Image.fromarray(array).save(path, format=fmt)


def _visible_bytes(folder):
  return {
    n: open(os.path.join(folder, n), "rb").read()
    for n in sorted(os.listdir(folder))
    if not n.startswith(".")
  }


def _stat(folder, names):
  """{name: (inode, mtime_ns)} of files of `folder`."""
  return {n: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for n in names for p in [f"{folder}/{n}"]}


class ResumeTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.photos = os.path.join(self.root, "photos")
    for c, name in enumerate(("arch", "bridge", "tower")):
      for i in range(6):
        _save(os.path.join(self.photos, name, f"{name}{i}.jpg"), 10 * c + i)
    _save(os.path.join(self.photos, "arch", "arch9.png"), 99, fmt="PNG")  # re-encoded
    with open(os.path.join(self.photos, "bridge", "broken.jpg"), "wb") as f:
      f.write(b"\xff\xd8\xff\xe0 not a jpeg")  # a failures.csv row

  def _config(self, out, seed=0):
    return dataset_config.DatasetBuildConfig(
      output_directory=os.path.join(self.root, out),
      image_folder=self.photos,
      num_shards=3,
      num_validation_shards=2,
      validation_split_size=0.25,
      seed=seed,
      num_workers=1,
    )

  def _interrupted(self, out, after_shards, seed=0):
    """Builds into `out`, stopped by an exception once `after_shards` shards are written."""
    real, calls = dataset_writer._write_shard, []

    def stop_after(job, stream, progress):
      if len(calls) == after_shards:
        raise KeyboardInterrupt
      calls.append(os.path.basename(job.path))
      return real(job, stream, progress)

    with mock.patch.object(dataset_writer, "_write_shard", stop_after):
      with self.assertRaises(KeyboardInterrupt):
        dataset_writer.build_dataset(self._config(out, seed))
    return calls

  def _resumed(self, out, seed=0):
    """Builds into `out`; returns (the summary, the shards this run wrote)."""
    real, calls = dataset_writer._write_shard, []

    def counting(job, stream, progress):
      calls.append(os.path.basename(job.path))
      return real(job, stream, progress)

    with mock.patch.object(dataset_writer, "_write_shard", counting):
      summary = dataset_writer.build_dataset(self._config(out, seed))
    return summary, calls

  def _assert_no_temp_files(self, out):
    for folder in (out, os.path.join(out, dataset_writer.WORK_DIR)):
      if os.path.isdir(folder):
        self.assertEmpty([n for n in os.listdir(folder) if file_utils.TEMP_NAME_PATTERN.match(n)])

  def test_rerun_after_an_exception_writes_only_the_missing_shards(self):
    reference = dataset_writer.build_dataset(self._config("reference"))
    self.assertLen(reference.failures, 1)
    self.assertFalse(os.path.exists(os.path.join(self.root, "reference", ".build")))
    out = os.path.join(self.root, "out")
    self.assertEqual(self._interrupted("out", 2), TRAIN_SHARDS[:2])
    self._assert_no_temp_files(out)
    self.assertFalse(os.path.exists(os.path.join(out, TRAIN_SHARDS[2])))
    self.assertCountEqual(
      os.listdir(os.path.join(out, ".build")), [n + ".done.json" for n in TRAIN_SHARDS[:2]]
    )
    kept = _stat(out, TRAIN_SHARDS[:2])
    time.sleep(0.01)  # a rewrite would get another mtime
    summary, written = self._resumed("out")
    self.assertEqual(written, TRAIN_SHARDS[2:] + VALIDATION_SHARDS)
    self.assertEqual(_stat(out, TRAIN_SHARDS[:2]), kept)
    self.assertEqual(_visible_bytes(out), _visible_bytes(os.path.join(self.root, "reference")))
    self.assertEqual(
      (summary.num_train, summary.num_validation, summary.failures),
      (reference.num_train, reference.num_validation, reference.failures),
    )
    self.assertFalse(os.path.exists(os.path.join(out, ".build")))  # done: nothing left to resume

  def test_a_changed_plan_rewrites_the_finished_shards(self):
    self._interrupted("out", 3, seed=0)
    _, written = self._resumed("out", seed=1)
    self.assertEqual(written, TRAIN_SHARDS + VALIDATION_SHARDS)
    dataset_writer.build_dataset(self._config("reference", seed=1))
    out = os.path.join(self.root, "out")
    self.assertEqual(_visible_bytes(out), _visible_bytes(os.path.join(self.root, "reference")))

  def test_a_shard_file_deleted_after_its_done_record_is_written_again(self):
    self._interrupted("out", 2)
    os.unlink(os.path.join(self.root, "out", TRAIN_SHARDS[0]))
    _, written = self._resumed("out")
    self.assertEqual(written, [TRAIN_SHARDS[0]] + TRAIN_SHARDS[2:] + VALIDATION_SHARDS)

  def test_the_command_killed_after_its_first_shard_resumes(self):
    dataset_writer.build_dataset(self._config("reference"))
    out = os.path.join(self.root, "out")
    command = [sys.executable, "-c", SLOW_BUILD, f"--image_folder={self.photos}"]
    command += [f"--output_directory={out}", "--num_shards=3", "--num_validation_shards=2"]
    command += ["--validation_split_size=0.25", "--num_workers=1"]
    first_done = os.path.join(out, ".build", TRAIN_SHARDS[0] + ".done.json")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
      deadline = time.monotonic() + 120
      while not os.path.exists(first_done) and process.poll() is None:
        self.assertLess(time.monotonic(), deadline, "no shard done in 120 s")
        time.sleep(0.05)
      process.send_signal(signal.SIGKILL)
    finally:
      _, stderr = process.communicate(timeout=60)
    self.assertEqual(process.returncode, -signal.SIGKILL, stderr[-2000:])
    done = sorted(n[: -len(".done.json")] for n in os.listdir(os.path.join(out, ".build")))
    self.assertNotEmpty(done)
    self.assertNotIn(VALIDATION_SHARDS[-1], done)  # killed midway
    kept = _stat(out, done)
    time.sleep(0.01)
    _, written = self._resumed("out")
    self.assertEqual(written, [n for n in TRAIN_SHARDS + VALIDATION_SHARDS if n not in done])
    self.assertEqual(_stat(out, done), kept)
    self.assertEqual(_visible_bytes(out), _visible_bytes(os.path.join(self.root, "reference")))
    self._assert_no_temp_files(out)  # the killed run's temporary shard was removed


if __name__ == "__main__":
  tf.test.main()
