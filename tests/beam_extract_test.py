"""Tests for extraction on Apache Beam (beam_pipeline.py, the dolg-extract-beam command).

The command runs on the DirectRunner with two worker processes over 50
images; its outputs must equal the single-process extractor's. A run killed
mid-way (one image is a FIFO no writer ever opens, so the pipeline cannot
finish) and started again must end with every image written and nothing
partial.
"""

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.extraction import beam_pipeline, failure_log, local_extractor, pipeline, task_sources
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import descriptor_reading
from dolg_tf.utils import beam_cli
from dolg_tf.utils import files as file_utils
from tests import testutil

SUFFIX = ".dolg_global"
NUM_IMAGES = 50
SIZES = ((60, 80), (80, 60), (50, 50))  # (height, width): three batching groups
TWO_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


def _write_images(folder, count, seed=0):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    height, width = SIZES[i % len(SIZES)]
    array = rng.integers(0, 256, [height, width, 3], dtype=np.uint8)
    Image.fromarray(array).save(os.path.join(folder, f"img{i:03d}.png"))


def _write_config(path, export_dir, local=False):
  with open(path, "w") as f:
    f.write(f'model_path: "{export_dir}"\nmax_image_size: 80\n')
    if local:
      f.write("use_local_features: true\nlocal_config { max_feature_num: 40 }\n")


def _command(*args, timeout=300):
  return testutil.run_module("dolg_tf.extraction.beam_extract", *args, timeout=timeout)


def _global_outputs(folder):
  return descriptor_reading.read_descriptors(folder, suffix=SUFFIX)


def _temp_files(folder):
  return [n for n in os.listdir(folder) if file_utils.TEMP_NAME_PATTERN.match(n)]


class BeamExtractTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tf.compat.v1.test.get_temp_dir()
    cls.images = os.path.join(root, "beam_images")
    _write_images(cls.images, NUM_IMAGES)
    with open(os.path.join(cls.images, "broken.png"), "wb") as f:
      f.write(b"not an image")
    export = testutil.tiny_export("dolg", export_config=testutil.SMALL_EXPORT_CONFIG)
    cls.config = os.path.join(root, "beam_dolg.pbtxt")
    _write_config(cls.config, export)
    # The reference: the single-process pipeline, one image per forward.
    cls.reference = os.path.join(root, "beam_reference")
    cls.extractor = extractor_lib.Extractor.from_config_file(cls.config)
    tasks = task_sources.tasks_from_paths(task_sources.list_images(cls.images))
    summary = pipeline.run_extraction(cls.extractor, tasks, cls.reference)
    assert (summary.done, summary.failed) == (NUM_IMAGES, 1), summary
    cls.reference_ids, cls.reference_matrix = _global_outputs(cls.reference)

  def _assert_equals_reference(self, folder):
    ids, matrix = _global_outputs(folder)
    self.assertEqual(ids, self.reference_ids)
    self.assertAllClose(matrix, self.reference_matrix, atol=1e-6, rtol=0)
    self.assertEqual(_temp_files(folder), [])

  def test_two_workers_equal_the_single_process_extractor(self):
    out = self.create_tempdir().full_path
    result = _command(
      f"--config={self.config}", f"--images_dir={self.images}", f"--output_dir={out}", *TWO_WORKERS
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn(f"done {NUM_IMAGES}, skipped 0, failed 1", result.stdout)
    self._assert_equals_reference(out)
    rows = failure_log.read_failures(os.path.join(out, failure_log.FAILURES_FILE))
    reference_rows = failure_log.read_failures(
      os.path.join(self.reference, failure_log.FAILURES_FILE)
    )
    self.assertEqual(
      [(r["image_id"], r["reason"]) for r in rows],
      [(r["image_id"], r["reason"]) for r in reference_rows],
    )
    # A second run reads no image: everything is planned as skipped, the failure stays recorded.
    again = _command(
      f"--config={self.config}", f"--images_dir={self.images}", f"--output_dir={out}", *TWO_WORKERS
    )
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn(f"done 0, skipped {NUM_IMAGES}, failed 1", again.stdout)
    self.assertLen(failure_log.read_failures(os.path.join(out, failure_log.FAILURES_FILE)), 1)

  def test_killed_run_resumes_with_nothing_lost_or_partial(self):
    images = self.create_tempdir().full_path
    for name in os.listdir(self.images):
      if name != "broken.png":
        os.symlink(os.path.join(self.images, name), os.path.join(images, name))
    blocker = os.path.join(images, "zz_blocker.png")
    os.mkfifo(blocker)  # Opening it for reading blocks: the worker that gets it never finishes.
    out = self.create_tempdir().full_path
    args = (f"--config={self.config}", f"--images_dir={images}", f"--output_dir={out}")
    process = subprocess.Popen(
      [sys.executable, "-m", "dolg_tf.extraction.beam_extract", *args, *TWO_WORKERS],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      start_new_session=True,
    )
    try:
      deadline = time.monotonic() + 240
      last, stable_since = -1, time.monotonic()
      while time.monotonic() < deadline:
        count = len([n for n in os.listdir(out) if n.endswith(SUFFIX)])
        if count != last:
          last, stable_since = count, time.monotonic()
        elif count > 0 and time.monotonic() - stable_since > 2.0:
          break
        self.assertIsNone(process.poll(), "the pipeline ended although one image blocks it")
        time.sleep(0.1)
    finally:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
    written_before = sorted(n for n in os.listdir(out) if n.endswith(SUFFIX))
    self.assertNotEmpty(written_before)
    self.assertLess(len(written_before), NUM_IMAGES + 1)
    for name in written_before:  # Nothing partial: every file parses, with the reference values.
      descriptor = descriptor_reading.read_descriptors(out, [name[: -len(SUFFIX)]], suffix=SUFFIX)
      index = self.reference_ids.index(name[: -len(SUFFIX)])
      self.assertAllClose(descriptor[1][0], self.reference_matrix[index], atol=1e-6, rtol=0)

    os.unlink(blocker)
    os.symlink(os.path.join(self.images, "img000.png"), blocker)
    result = _command(*args, *TWO_WORKERS)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn(
      f"done {NUM_IMAGES + 1 - len(written_before)}, skipped {len(written_before)}, failed 0",
      result.stdout,
    )
    ids, matrix = _global_outputs(out)
    self.assertEqual(ids, sorted(self.reference_ids + ["zz_blocker"]))
    self.assertAllClose(matrix[:-1], self.reference_matrix, atol=1e-6, rtol=0)
    self.assertAllClose(matrix[-1], self.reference_matrix[0], atol=1e-6, rtol=0)
    self.assertEqual(_temp_files(out), [])
    self.assertFalse(os.path.exists(os.path.join(out, failure_log.FAILURES_FILE)))

  def test_delg_local_and_global_in_batches_equal_single_image_extraction(self):
    root = self.create_tempdir().full_path
    config = os.path.join(root, "delg.pbtxt")
    _write_config(
      config, testutil.tiny_export("delg", export_config=testutil.SMALL_EXPORT_CONFIG), True
    )
    images = os.path.join(root, "images")
    _write_images(images, 12, seed=1)
    tasks = task_sources.tasks_from_paths(task_sources.list_images(images))
    single = os.path.join(root, "single")
    delg = extractor_lib.Extractor.from_config_file(config)
    self.assertEqual(pipeline.run_extraction(delg, tasks, single).done, 12)
    out = os.path.join(root, "beam")
    counts = beam_pipeline.run_pipeline(
      config, tasks, out, beam_cli.pipeline_options(["test"]), batch_size=4
    )
    self.assertEqual((counts["done"], counts["skipped"], counts["failed"]), (12, 0, 0))
    for task in tasks:
      want = local_extractor.read_local_features(
        os.path.join(single, task.image_id + ".delg_local")
      )
      got = local_extractor.read_local_features(os.path.join(out, task.image_id + ".delg_local"))
      for a, b in zip(got, want):
        self.assertAllClose(a, b, atol=1e-6, rtol=0)
    self.assertAllClose(
      descriptor_reading.read_descriptors(out, suffix=SUFFIX)[1],
      descriptor_reading.read_descriptors(single, suffix=SUFFIX)[1],
      atol=1e-6,
      rtol=0,
    )

  def test_query_crops_from_ground_truth_match_extract_features(self):
    root = self.create_tempdir().full_path
    gnd = os.path.join(root, "gnd_test.pkl")
    with open(gnd, "wb") as f:
      pickle.dump(
        {
          "imlist": ["img000", "img003"],
          "qimlist": ["img001", "img002"],
          "gnd": [
            {"bbx": [5.0, 10.0, 40.0, 50.0], "easy": [0], "hard": [], "junk": []},
            {"bbx": [0.0, 0.0, 30.0, 30.0], "easy": [1], "hard": [], "junk": []},
          ],
        },
        f,
      )
    out_beam, out_single = os.path.join(root, "beam"), os.path.join(root, "single")
    args = (
      f"--config={self.config}",
      f"--images_dir={self.images}",
      f"--gnd_path={gnd}",
      "--image_extension=.png",
      "--query_crop",
    )
    result = _command(*args, f"--output_dir={out_beam}")
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    single = testutil.run_module(
      "dolg_tf.extraction.extract_features", *args, f"--output_dir={out_single}"
    )
    self.assertEqual(single.returncode, 0, single.stderr[-3000:])
    ids, matrix = _global_outputs(out_beam)
    self.assertEqual(ids, ["img001", "img002"])
    self.assertAllClose(matrix, _global_outputs(out_single)[1], atol=1e-6, rtol=0)
    # Cropped: not the whole image's descriptor.
    self.assertGreater(np.abs(matrix[0] - self.reference_matrix[1]).max(), 1e-3)

  def test_user_errors_are_one_line_and_exit_2(self):
    out = self.create_tempdir().full_path
    cases = {
      "--bogus_option": (
        f"--config={self.config}",
        f"--images_dir={self.images}",
        "--bogus_option=1",
      ),
      "config file not found": ("--config=/nonexistent.pbtxt", f"--images_dir={self.images}"),
      "--batch_size": (f"--config={self.config}", f"--images_dir={self.images}", "--batch_size=0"),
    }
    for expected, args in cases.items():
      with self.subTest(expected):
        result = _command(*args, f"--output_dir={out}")
        self.assertEqual(result.returncode, 2, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        self.assertLen(lines, 1, result.stderr)
        self.assertIn(expected, lines[0])
        self.assertNotIn("Traceback", result.stderr)


class PlanTest(tf.test.TestCase):
  def test_plan_skips_images_with_all_their_files(self):
    out = self.create_tempdir().full_path
    for name in ("a.dolg_global", "b.dolg_global", "b.delg_local", "c.delg_local", ".d.delg_local"):
      open(os.path.join(out, name), "w").close()
    tasks = task_sources.tasks_from_paths([f"/x/{i}.jpg" for i in "abcde"] + ["/x/.hidden.jpg"])
    config = extractor_lib.DolgConfig(model_path="m", use_local_features=True)
    todo, skipped, hidden = beam_pipeline.plan_extraction(config, tasks, out)
    self.assertEqual([t.image_id for t in todo], ["a", "c", "d", "e"])
    self.assertEqual(skipped, 1)
    self.assertEqual([t.image_id for t in hidden], [".hidden"])
    global_only = extractor_lib.DolgConfig(model_path="m")
    todo, skipped, _ = beam_pipeline.plan_extraction(global_only, tasks, out)
    self.assertEqual(([t.image_id for t in todo], skipped), (["c", "d", "e"], 2))


if __name__ == "__main__":
  tf.test.main()
