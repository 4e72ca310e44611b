"""Runs extract_features.py as a subprocess on a tiny exported model."""

import errno
import os
import pickle
import socket
import subprocess
import sys
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import flagsaver
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.extraction import extract_features, failure_log, output_folder
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import datum_io, descriptor_files, descriptor_reading
from dolg_tf.utils import cli
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
    ids, matrix = descriptor_reading.read_descriptors(os.path.join(self.work, "out"))
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
    ids, matrix = descriptor_reading.read_descriptors(os.path.join(self.work, "queries"))
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
    rows = failure_log.read_failures(os.path.join(self.work, "bad_out", failure_log.FAILURES_FILE))
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

  def test_delf_command_line_and_config(self):
    """DELF's DELG script flags and a DelfConfig: cropped queries, <name>.delg_global files."""
    with open(os.path.join(self.work, "delf_config.pbtxt"), "w") as f:
      f.write(
        'model_path: "export/1"\nimage_scales: 0.7071\nimage_scales: 1.0\n'
        "max_image_size: 40\nuse_local_features: false\nuse_global_features: true\n"
        "is_tf2_exported: true\ndelf_global_config { use_pca: false }\n"
      )
    gnd = {
      "imlist": ["im0", "im1", "im2"],
      "qimlist": ["im1"],
      "gnd": [{"bbx": [5.0, 10.0, 30.0, 40.0], "easy": [0], "hard": [], "junk": [2]}],
    }
    with open(os.path.join(self.work, "gnd_delf.pkl"), "wb") as f:
      pickle.dump(gnd, f)
    result = self._run(
      "--delf_config_path=delf_config.pbtxt",
      "--dataset_file_path=gnd_delf.pkl",
      "--images_dir=images",
      "--image_set=query",
      "--output_features_dir=delf_queries",
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    out = os.path.join(self.work, "delf_queries")
    self.assertIn("im1.delg_global", os.listdir(out))
    got = datum_io.ReadFromFile(os.path.join(out, "im1.delg_global"))
    # The same pooling as config.pbtxt's (no PCA), on the query cropped to its box.
    cropped = self.extractor.extract_from_file(self.paths[1], (5, 10, 30, 40))
    self.assertAllClose(got, cropped, atol=1e-6)

    index = self._run(
      "--delf_config_path=delf_config.pbtxt",
      "--dataset_file_path=gnd_delf.pkl",
      "--images_dir=images",
      "--image_set=index",
      "--output_features_dir=delf_index",
    )
    self.assertEqual(index.returncode, 0, index.stderr[-3000:])
    names = sorted(n for n in os.listdir(os.path.join(self.work, "delf_index")) if "delg" in n)
    self.assertEqual(names, ["im0.delg_global", "im1.delg_global", "im2.delg_global"])
    got = datum_io.ReadFromFile(os.path.join(self.work, "delf_index", "im1.delg_global"))
    self.assertAllClose(got, self.extractor.extract_from_file(self.paths[1]), atol=1e-6)

  def test_conflicting_delf_and_project_flags(self):
    cases = [
      (["--config=config.pbtxt", "--delf_config_path=other.pbtxt"], "--delf_config_path"),
      (["--output_dir=a", "--output_features_dir=b"], "--output_features_dir=b conflict"),
      (["--gnd_path=a.pkl", "--dataset_file_path=b.pkl"], "--dataset_file_path=b.pkl"),
    ]
    for flags, message in cases:
      result = self._run("--images_dir=images", *flags)
      self.assertEqual(result.returncode, 2, (flags, result.stderr[-3000:]))
      self.assertIn(message, self._last_line(result))

  def _last_line(self, result):
    lines = result.stderr.strip().splitlines()
    self.assertTrue(lines[-1].startswith("extract_features: error: "), lines[-1])
    return lines[-1]

  def test_odd_images_are_failures_with_reasons_once_each(self):
    folder = os.path.join(self.work, "odd_images")
    os.makedirs(folder)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, [30, 40, 3], dtype=np.uint8)).save(
      os.path.join(folder, "scan.tif")
    )
    Image.fromarray(rng.integers(0, 256, [60, 60, 3], dtype=np.uint8)).save(
      os.path.join(folder, "large.png")
    )
    Image.new("RGB", (5, 30)).save(os.path.join(folder, "thin.png"))
    Image.new("RGB", (30, 30)).save(os.path.join(folder, ".hidden.png"))  # skipped
    flags_ = ["--config=config.pbtxt", "--images_dir=odd_images", "--output_dir=odd_out"]
    for _ in range(2):
      result = self._run(*flags_, "--max_pixels=2000")
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      rows = failure_log.read_failures(
        os.path.join(self.work, "odd_out", failure_log.FAILURES_FILE)
      )
      reasons = {r["image_id"]: r["reason"] for r in rows}
      self.assertCountEqual(reasons, ["large", "thin"])
      self.assertIn(
        "large.png: image too large (60x60 = 3600 pixels > limit 2000)", reasons["large"]
      )
      self.assertIn("thin.png: image too small (5x30", reasons["thin"])
    self.assertIn("done 0, skipped 1, failed 2", result.stdout)
    ids, _ = descriptor_reading.read_descriptors(os.path.join(self.work, "odd_out"))
    self.assertEqual(ids, ["scan"])
    result = self._run(*flags_, "--max_pixels=0")
    self.assertEqual(result.returncode, 2)
    self.assertIn("--max_pixels must be positive, got 0", self._last_line(result))

  def test_bad_output_folders_are_refused_before_the_model_loads(self):
    with open(os.path.join(self.work, "a_file"), "w") as f:
      f.write("not a folder")
    # A model folder that is no SavedModel: loading it would fail with another message.
    os.makedirs(os.path.join(self.work, "not_a_model"), exist_ok=True)
    with open(os.path.join(self.work, "bad_model.pbtxt"), "w") as f:
      f.write('model_path: "not_a_model"\nimage_scales: 1.0\n')
    cases = [
      ("a_file", "a_file: output folder is a file, not a folder"),
      ("a_file/sub", "a_file/sub: cannot create the output folder (Not a directory)"),
    ]
    for output_dir, message in cases:
      result = self._run(
        "--config=bad_model.pbtxt", "--images_dir=images", f"--output_dir={output_dir}"
      )
      self.assertEqual(result.returncode, 2, result.stderr[-3000:])
      self.assertEqual(self._last_line(result), f"extract_features: error: {message}")
    with open(os.path.join(self.work, "a_file")) as f:
      self.assertEqual(f.read(), "not a folder")
    # The model did not load: the folder this run created is not left behind.
    result = self._run("--config=bad_model.pbtxt", "--images_dir=images", "--output_dir=fresh")
    self.assertEqual(result.returncode, 2)
    self.assertFalse(os.path.exists(os.path.join(self.work, "fresh")))

  def test_a_folder_in_use_is_refused_naming_the_holder(self):
    out = os.path.join(self.work, "locked_out")
    os.makedirs(out)
    with output_folder.OutputLock(out):
      result = self._run("--config=config.pbtxt", "--images_dir=images", "--output_dir=locked_out")
    self.assertEqual(result.returncode, 2, result.stderr[-3000:])
    self.assertEqual(
      self._last_line(result),
      f"extract_features: error: locked_out: output folder in use by another extraction "
      f"(pid {os.getpid()} on {socket.gethostname()}); wait for it to finish or use another "
      "output folder",
    )
    self.assertEqual(os.listdir(out), [])

  def _main(self, **flag_values):
    extract_features.define_flags()
    if not extract_features.FLAGS.is_parsed():
      extract_features.FLAGS.mark_as_parsed()
    cwd = os.getcwd()
    os.chdir(self.work)  # config.pbtxt's relative model_path, as the binary sees it.
    try:
      with flagsaver.flagsaver(**flag_values):
        return extract_features.main(["extract_features"])
    finally:
      os.chdir(cwd)

  def test_read_only_output_stops_before_the_model_and_full_disk_mid_run(self):
    config = os.path.join(self.work, "config.pbtxt")
    images_dir = os.path.join(self.work, "images")
    out = os.path.join(self.work, "ro_out")
    os.makedirs(out)
    real_open = os.open

    def read_only(path, *args, **kwargs):
      if os.fspath(path).startswith(out):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
      return real_open(path, *args, **kwargs)

    with mock.patch.object(extractor_lib, "Extractor") as model, mock.patch("os.open", read_only):
      with self.assertRaisesRegex(
        cli.UserError, f"^{out}: output folder is not writable \\(Read-only file system\\)$"
      ):
        self._main(config=config, images_dir=images_dir, output_dir=out)
      model.assert_not_called()
    # Disk full after the first image: one line saying so; the rest is done by the next run.
    real_write = descriptor_files.datum_io.write_to_file
    calls = []

    def full_after_one(path, array):
      calls.append(path)
      if len(calls) > 1:
        raise OSError(f"{path}: cannot write (No space left on device)") from OSError(
          errno.ENOSPC, os.strerror(errno.ENOSPC)
        )
      real_write(path, array)

    with mock.patch.object(descriptor_files.datum_io, "write_to_file", side_effect=full_after_one):
      with self.assertRaisesRegex(
        cli.UserError,
        f"^{out}: extraction stopped \\(disk full\\): .*im1.dolg_global: cannot write "
        "\\(No space left on device\\); this run wrote 1, failed 0, left 2 not written "
        "\\(the next run extracts them\\)$",
      ):
        self._main(config=config, images_dir=images_dir, output_dir=out, prefetch=1)
    self.assertEqual(os.listdir(out), ["im0.dolg_global"])
    self.assertEqual(self._main(config=config, images_dir=images_dir, output_dir=out), 0)
    self.assertEqual(descriptor_reading.read_descriptors(out)[0], ["im0", "im1", "im2"])


if __name__ == "__main__":
  tf.test.main()
