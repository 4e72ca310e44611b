"""Runs extract_features.py as a subprocess on a tiny exported model."""

import os
import pickle
import subprocess
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.extraction import pipeline
from tests import testutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_SCALE = config_lib.ExportConfig(image_scales=(1.0,))
SCRIPT = os.path.join(REPO_ROOT, "extract_features.py")


class ExtractFeaturesTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.work = os.path.join(tf.compat.v1.test.get_temp_dir(), "extract_features_work")
    os.makedirs(os.path.join(cls.work, "images"))
    # The shared export, linked as <work>/export/1 for a relative model_path.
    os.makedirs(os.path.join(cls.work, "export"))
    export_dir = os.path.join(cls.work, "export", "1")
    os.symlink(testutil.tiny_export("dolg", export_config=ONE_SCALE), export_dir)
    # A relative model_path: resolved against the caller's directory.
    with open(os.path.join(cls.work, "config.pbtxt"), "w") as f:
      f.write('model_path: "export/1"\nimage_scales: 0.7071\nimage_scales: 1.0\n')
      f.write("max_image_size: 40\n")
    rng = np.random.default_rng(0)
    cls.paths = []
    for i, size in enumerate([(30, 40), (50, 35), (20, 20)]):
      path = os.path.join(cls.work, "images", f"im{i}.jpg")
      Image.fromarray(rng.integers(0, 256, [*size, 3], dtype=np.uint8)).save(path)
      cls.paths.append(path)
    cls.extractor = extractor_lib.Extractor.from_config_file(
      os.path.join(cls.work, "config.pbtxt"), model_path=export_dir
    )

  def setUp(self):
    super().setUp()
    if not os.path.exists(SCRIPT):
      self.skipTest(f"{SCRIPT} is not in this test's runfiles")

  def _run(self, *flags):
    """Runs the binary as `bazel run` would: cwd elsewhere, paths relative to the caller."""
    env = dict(os.environ, BUILD_WORKING_DIRECTORY=self.work, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = REPO_ROOT
    return subprocess.run(
      [sys.executable, SCRIPT, *flags],
      cwd=REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )

  def test_extracts_a_folder_and_resumes(self):
    result = self._run("--config=config.pbtxt", "--images_dir=images", "--output_dir=out")
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("done 3, skipped 0, failed 0", result.stdout)
    ids, matrix = pipeline.read_descriptors(os.path.join(self.work, "out"))
    self.assertEqual(ids, ["im0", "im1", "im2"])
    expected = np.stack([self.extractor.extract_from_file(p) for p in self.paths])
    self.assertAllClose(matrix, expected, atol=1e-6)
    again = self._run("--config=config.pbtxt", "--images_dir=images", "--output_dir=out")
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn("done 0, skipped 3, failed 0", again.stdout)

  def test_ground_truth_queries_are_cropped_into_shards(self):
    gnd = {
      "imlist": ["im0", "im1", "im2"],
      "qimlist": ["im1"],
      "gnd": [{"bbx": [5.0, 10.0, 30.0, 40.0], "easy": [0], "hard": [], "junk": [2]}],
    }
    with open(os.path.join(self.work, "gnd_test.pkl"), "wb") as f:
      pickle.dump(gnd, f)
    result = self._run(
      "--config=config.pbtxt",
      "--images_dir=images",
      "--gnd_path=gnd_test.pkl",
      "--image_set=query",
      "--query_crop",
      "--output_dir=queries",
      "--output_format=shards",
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    ids, matrix = pipeline.read_descriptors(os.path.join(self.work, "queries"))
    self.assertEqual(ids, ["im1"])
    cropped = self.extractor.extract_from_file(self.paths[1], (5, 10, 30, 40))
    self.assertAllClose(matrix[0], cropped, atol=1e-6)
    uncropped = self.extractor.extract_from_file(self.paths[1])
    self.assertLess(float(np.dot(matrix[0], uncropped)), 1 - 1e-6)

  def test_nothing_readable_exits_with_1(self):
    with open(os.path.join(self.work, "bad_list.txt"), "w") as f:
      f.write("images/absent.jpg\n")
    result = self._run(
      "--config=config.pbtxt", "--list_images_path=bad_list.txt", "--output_dir=bad_out"
    )
    self.assertEqual(result.returncode, 1, result.stderr[-3000:])
    rows = pipeline.read_failures(os.path.join(self.work, "bad_out", pipeline.FAILURES_FILE))
    self.assertEqual([r["image_id"] for r in rows], ["absent"])

  def test_missing_inputs_give_one_line_errors(self):
    with open(os.path.join(self.work, "no_model.pbtxt"), "w") as f:
      f.write('model_path: "/nonexistent/dolg_model"\nimage_scales: 1.0\n')
    cases = [
      (["--config=nope.pbtxt", "--images_dir=images"], "nope.pbtxt: config file not found"),
      (["--config=no_model.pbtxt", "--images_dir=images"], "'/nonexistent/dolg_model' not found"),
      (["--config=config.pbtxt", "--list_images_path=nolist.txt"], "nolist.txt: image list"),
      (["--config=config.pbtxt", "--images_dir=noimages"], "noimages: images folder not found"),
    ]
    for flags, message in cases:
      result = self._run(*flags, "--output_dir=err_out")
      self.assertEqual(result.returncode, 2, (flags, result.stderr[-3000:]))
      lines = result.stderr.strip().splitlines()
      self.assertTrue(lines[-1].startswith("extract_features: error: "), lines[-1])
      self.assertIn(message, lines[-1])


if __name__ == "__main__":
  tf.test.main()
