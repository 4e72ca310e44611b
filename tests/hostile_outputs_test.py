"""Issue 25, outputs, ids, descriptors and configs: no silent wrong result.

failures.tsv keeps ids exactly (backslash-escaped fields); repeated image ids
are failures rows, not a refused run; retrieval refuses descriptors it cannot
rank; a degenerate model's descriptors are failures; configs whose pyramid
the network cannot use are refused; outputs are fsync'ed and a resume
re-extracts outputs that do not parse.
"""

import contextlib
import errno
import os
import pickle
import subprocess
import zipfile
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from PIL import Image

from dolg_tf.extraction import (
  beam_pipeline,
  extraction_outputs,
  failure_log,
  local_extractor,
  pipeline,
  postprocess,
  task_sources,
)
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import (
  config_io,
  datum_io,
  descriptor_files,
  descriptor_reading,
  feature_io,
  image_pyramid,
)
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import images
from tests import testutil

SUFFIX = ".dolg_global"
GOOD = np.array([1.0, 2.0, 3.0, 4.0], np.float32)


class FakeExtractor:
  """A model-free extractor: a file holding b'bad' cannot be read, others give `descriptor`."""

  suffix = SUFFIX

  def __init__(self, descriptor=GOOD):
    self.descriptor = descriptor
    self.loaded = []

  def load_and_preprocess(self, path, box=None):
    del box
    with open(path, "rb") as f:
      if f.read() == b"bad":
        raise images.ImageError(f"{path}: not an image")
    self.loaded.append(os.path.basename(path))
    return np.zeros([12, 12, 3], np.uint8)

  def extract(self, image):
    del image
    return np.array(self.descriptor)


def _touch(path, data=b"ok"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return path


def _rows(output_dir):
  path = os.path.join(output_dir, failure_log.FAILURES_FILE)
  return failure_log.read_failures(path) if os.path.exists(path) else []


def _temp_files(folder):
  return [n for n in os.listdir(folder) if file_utils.TEMP_NAME_PATTERN.match(n)]


class FailureIdsTest(tf.test.TestCase):
  def _run(self, paths, extractor=None):
    out = os.path.join(self.root, "out")
    summary = pipeline.run_extraction(
      extractor or FakeExtractor(), task_sources.tasks_from_paths(paths), out, log_interval=1e9
    )
    return summary, out

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def test_ids_differing_in_whitespace_stay_two_rows(self):
    paths = [_touch(os.path.join(self.root, "img", n), b"bad") for n in ("a b.png", "a  b.png")]
    summary, out = self._run(paths)
    self.assertEqual((summary.failed, summary.exit_code), (2, 1))
    self.assertCountEqual([r["image_id"] for r in _rows(out)], ["a b", "a  b"])
    with open(os.path.join(out, failure_log.FAILURES_FILE), encoding="utf-8") as f:
      lines = f.read().splitlines()
    self.assertEqual(lines[0], "time\timage_id\tpath\treason")  # The columns DELF users read.
    self.assertLen(lines, 3)
    self.assertTrue(all(line.count("\t") == 3 for line in lines))

  def test_id_with_a_tab_failing_then_succeeding_leaves_no_row(self):
    path = _touch(os.path.join(self.root, "img", "x\ty\\z.png"), b"bad")
    summary, out = self._run([path])
    self.assertEqual(summary.exit_code, 1)
    (row,) = _rows(out)
    self.assertEqual((row["image_id"], row["path"]), ("x\ty\\z", path))
    with open(os.path.join(out, failure_log.FAILURES_FILE), encoding="utf-8") as f:
      self.assertIn("x\\ty\\\\z", f.read())  # Backslash-escaped on disk.
    _touch(path, b"good")
    summary, _ = self._run([path])
    self.assertEqual((summary.done, summary.failed, summary.exit_code), (1, 0, 0))
    self.assertFalse(os.path.exists(os.path.join(out, failure_log.FAILURES_FILE)))
    self.assertTrue(os.path.isfile(os.path.join(out, "x\ty\\z" + SUFFIX)))

  def test_collision_rows_survive_the_success_of_their_id(self):
    path = os.path.join(self.root, failure_log.FAILURES_FILE)
    log = failure_log.FailureLog(path)
    log.add("a", "x/a.jpg", "unreadable")
    log.add("a", "y/a.jpg", task_sources.collision_reason("a", "x/a.jpg"))
    log.close()
    log = failure_log.FailureLog(path)  # Keys rebuilt from the file.
    self.assertEqual(log.image_ids(), ["a"])
    log.resolve(["a"])
    log.close()
    (row,) = failure_log.read_failures(path)
    self.assertEqual((row["image_id"], row["path"]), ("a", "y/a.jpg"))
    log.forget_collisions(["a"])
    log.close()
    self.assertFalse(os.path.exists(path))

  def test_beam_failures_file_forgets_collisions_of_the_run(self):
    path = os.path.join(self.root, failure_log.FAILURES_FILE)
    log = failure_log.FailureLog(path)
    log.add("a", "y/a.jpg", task_sources.collision_reason("a", "x/a.jpg"))
    log.add("b", "y/b.jpg", task_sources.collision_reason("b", "x/b.jpg"))
    log.close()
    config = config_io.DolgConfig()
    # This run was given "a" (no longer repeated) but not "b": only a's stale row goes.
    kept = beam_pipeline.write_failures([], config, self.root, run_ids=["a"])
    self.assertEqual(kept, 1)
    self.assertEqual([r["image_id"] for r in failure_log.read_failures(path)], ["b"])

  def test_escaping_round_trips(self):
    for text in ("a b", "a\tb", "a\nb\r", "back\\slash", "\\t literal", ""):
      escaped = failure_log.escape_field(text)
      self.assertNotRegex(escaped, "[\t\n\r]")
      self.assertEqual(failure_log.unescape_field(escaped), text)


class CollisionsTest(tf.test.TestCase):
  def test_repeated_ids_are_failure_rows_and_the_rest_runs(self):
    root = self.create_tempdir().full_path
    images_dir = os.path.join(root, "images")
    for name in (
      "100CANON/IMG_0001.JPG",
      "101CANON/IMG_0001.JPG",
      "img.bmp",
      "img.webp",
      "other.jpg",
    ):
      _touch(os.path.join(images_dir, name))
    out = os.path.join(root, "out")

    def run():
      tasks = task_sources.tasks_from_paths(task_sources.list_images(images_dir))
      return pipeline.run_extraction(FakeExtractor(), tasks, out, log_interval=1e9)

    summary = run()
    self.assertEqual((summary.total, summary.done, summary.failed), (5, 3, 2))
    self.assertEqual(summary.exit_code, 0)
    rows = {r["path"]: r["reason"] for r in _rows(out)}
    first = os.path.join(images_dir, "100CANON", "IMG_0001.JPG")
    self.assertEqual(
      rows,
      {
        os.path.join(images_dir, "101CANON", "IMG_0001.JPG"): task_sources.collision_reason(
          "IMG_0001", first
        ),
        os.path.join(images_dir, "img.webp"): task_sources.collision_reason(
          "img", os.path.join(images_dir, "img.bmp")
        ),
      },
    )
    written = sorted(n for n in os.listdir(out) if n.endswith(SUFFIX))
    self.assertEqual(written, ["IMG_0001" + SUFFIX, "img" + SUFFIX, "other" + SUFFIX])
    # A rerun: the kept images are done, which does not remove the collision rows.
    summary = run()
    self.assertEqual((summary.skipped, summary.failed, summary.exit_code), (3, 2, 0))
    self.assertLen(_rows(out), 2)
    # The user renames one file: its row goes, it is extracted.
    os.rename(os.path.join(images_dir, "img.webp"), os.path.join(images_dir, "img_webp.webp"))
    summary = run()
    self.assertEqual((summary.done, summary.failed), (1, 1))
    self.assertEqual([r["image_id"] for r in _rows(out)], ["IMG_0001"])

  def test_a_path_listed_twice_is_extracted_once(self):
    path = _touch(os.path.join(self.create_tempdir().full_path, "a.jpg"))
    tasks = task_sources.tasks_from_paths([path, path])
    self.assertLen(tasks, 1)


class DegenerateModelTest(parameterized.TestCase, tf.test.TestCase):
  @parameterized.named_parameters(
    ("zero", np.zeros(4, np.float32), "all-zero descriptor"),
    ("nan", np.array([1, np.nan, 0, 0], np.float32), "non-finite descriptor"),
    ("overflow", np.full(4, 1e30, np.float32), "L2 norm overflows float32"),
    ("two_d", np.ones([2, 2], np.float32), "2-D descriptor of shape [2, 2]"),
  )
  def test_descriptor_is_a_failure_row_not_a_file(self, descriptor, phrase):
    root = self.create_tempdir().full_path
    paths = [_touch(os.path.join(root, "img", f"{n}.jpg")) for n in "ab"]
    out = os.path.join(root, "out")
    summary = pipeline.run_extraction(
      FakeExtractor(descriptor), task_sources.tasks_from_paths(paths), out, log_interval=1e9
    )
    self.assertEqual((summary.done, summary.failed, summary.exit_code), (0, 2, 1))
    for row in _rows(out):
      self.assertStartsWith(row["reason"], "model returned a zero/non-finite descriptor: ")
      self.assertIn(phrase, row["reason"])
    self.assertEqual(sorted(os.listdir(out)), [failure_log.FAILURES_FILE])


class RetrievalRefusesTest(parameterized.TestCase, tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.features = os.path.join(self.root, "features")
    os.makedirs(self.features)
    gnd = {
      "imlist": ["db0", "db1"],
      "qimlist": ["q0"],
      "gnd": [{"easy": [0], "hard": [], "junk": [], "bbx": [0, 0, 10, 10]}],
    }
    self.gnd = os.path.join(self.root, "gnd_test.pkl")
    with open(self.gnd, "wb") as f:
      pickle.dump(gnd, f)
    for name in ("q0", "db0", "db1"):
      datum_io.write_to_file(os.path.join(self.features, name + SUFFIX), GOOD)

  @parameterized.named_parameters(
    ("two_d", np.ones([2, 4], np.float32), r"2-D descriptor of shape \[2, 4\], not a \[D\] vector"),
    ("zero", np.zeros(4, np.float32), r"all-zero descriptor \(4 values\)"),
    ("overflow", np.full(4, 1e30, np.float32), "descriptor whose L2 norm overflows float32"),
    (
      "tiny",
      np.full(4, 1e-30, np.float32),
      r"descriptor whose L2 norm 0 is under 1e-12 \(normalises",
    ),
    ("nan", np.array([1, np.nan, 0, 0], np.float32), r"non-finite descriptor \(1 of 4"),
  )
  def test_per_image_descriptor(self, values, message):
    bad = os.path.join(self.features, "db1" + SUFFIX)
    datum_io.write_to_file(bad, values)
    with self.assertRaisesRegex(ValueError, "^" + bad + ": " + message):
      descriptor_reading.read_descriptors(self.features)

  def test_dolg_retrieve_exits_2_naming_the_file(self):
    bad = os.path.join(self.features, "db1" + SUFFIX)
    datum_io.write_to_file(bad, np.ones([2, 4], np.float32))
    out = os.path.join(self.root, "metrics")
    result = testutil.run_module(
      "dolg_tf.retrieval.perform_retrieval",
      f"--dataset_file_path={self.gnd}",
      f"--query_features_dir={self.features}",
      f"--index_features_dir={self.features}",
      f"--output_dir={out}",
    )
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn("Traceback", result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    self.assertRegex(last, r"error: " + bad + r": 2-D descriptor of shape \[2, 4\]")
    self.assertFalse(os.path.exists(out))

  @parameterized.named_parameters(
    ("zero", 0.0, r"all-zero descriptor \(4 values\) for image b \(1 of 3 rows unusable\)"),
    ("overflow", 1e30, "descriptor whose L2 norm overflows float32 .* for image b"),
  )
  def test_shard_row(self, value, message):
    folder = os.path.join(self.root, "shards")
    os.makedirs(folder)
    rows = np.stack([GOOD, np.full(4, value, np.float32), GOOD])
    shard = os.path.join(folder, "descriptors-00000.npz")
    with open(shard, "wb") as f:
      np.savez(f, ids=np.array(["a", "b", "c"]), descriptors=rows)
    with self.assertRaisesRegex(ValueError, "^" + shard + ": " + message):
      descriptor_reading.read_descriptors(folder)


class PyramidConfigTest(parameterized.TestCase, tf.test.TestCase):
  @parameterized.named_parameters(
    (
      "too_small",
      "max_image_size: 64\nimage_scales: 0.1\nimage_scales: 1.0",
      "image_scales: scale 0.1",
    ),
    (
      "too_large",
      "max_image_size: 4096\nimage_scales: 1.0\nimage_scales: 2.0",
      "image_scales, max_image_size: scale 2 x max_image_size 4096 = 8192 px exceeds the 4096",
    ),
    (
      "min_size_too_large",
      "min_image_size: 3000\nimage_scales: 2.0",
      "image_scales, min_image_size: scale 2 x min_image_size 3000",
    ),
  )
  def test_refused_up_front(self, text, message):
    with self.assertRaisesRegex(ValueError, "^x.pbtxt: " + message):
      config_io.parse_dolg_config('model_path: "m"\n' + text + "\n", "x.pbtxt")

  def test_shipped_configs_pass(self):
    for path in (config_io.DOLG_CONFIG_PATH, config_io.DELG_CONFIG_PATH):
      config_io.load_dolg_config(path)

  def test_extract_features_exits_2_naming_image_scales(self):
    root = self.create_tempdir().full_path
    config = os.path.join(root, "bad.pbtxt")
    with open(config, "w") as f:
      f.write('model_path: "m"\nmax_image_size: 64\nimage_scales: 0.05\n')
    images_dir = os.path.join(root, "images")
    _touch(os.path.join(images_dir, "a.jpg"))
    out = os.path.join(root, "out")
    result = testutil.run_module(
      "dolg_tf.extraction.extract_features",
      f"--config={config}",
      f"--images_dir={images_dir}",
      f"--output_dir={out}",
    )
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertNotIn("Traceback", result.stderr)
    self.assertRegex(result.stderr.strip().splitlines()[-1], f"error: {config}: image_scales: ")
    self.assertFalse(os.path.exists(out))

  def test_per_image_scaled_size(self):
    # An Extractor without its SavedModel (building one costs tens of seconds on 2 cores):
    # preprocess and the pyramid check are NumPy only and read these attributes.
    extractor = extractor_lib.Extractor.__new__(extractor_lib.Extractor)
    extractor.local, extractor.use_global, extractor.suffix = False, True, SUFFIX
    extractor.max_image_size = extractor.min_image_size = -1  # No limit.
    extractor.square = extractor.truncate_boxes = False
    scales = np.array([0.25, 1.0, 2.5], np.float32)
    extractor.pyramid = image_pyramid.ImagePyramid(scales, np.arange(3), whole=False)
    config = config_io.DolgConfig(global_descriptor_suffix=SUFFIX)
    global_postprocess = postprocess.GlobalPostprocess(config.global_config)
    extractor.outputs = extraction_outputs.GlobalOutputs(config, global_postprocess)
    with self.assertRaisesRegex(ValueError, r"^image too small for image_scales: 30x36 .* 8x9 px"):
      extractor.preprocess(np.zeros([36, 30, 3], np.uint8))
    with self.assertRaisesRegex(
      ValueError, r"^image too large for image_scales: 1700x48 .* 4250x120"
    ):
      extractor.preprocess(np.zeros([48, 1700, 3], np.uint8))
    self.assertEqual(extractor.preprocess(np.zeros([40, 44, 3], np.uint8)).shape, (40, 44, 3))
    # In a run: a failures row naming the file (refused before the model runs).
    root = self.create_tempdir().full_path
    small = os.path.join(root, "small.png")
    Image.new("RGB", (30, 36)).save(small)
    out = os.path.join(root, "out")
    summary = pipeline.run_extraction(
      extractor, task_sources.tasks_from_paths([small]), out, log_interval=1e9
    )
    self.assertEqual((summary.done, summary.failed, summary.exit_code), (0, 1, 1))
    (row,) = _rows(out)
    self.assertIn(f"{small}: image too small for image_scales", row["reason"])
    self.assertEqual(os.listdir(out), [failure_log.FAILURES_FILE])


class DurableOutputsTest(tf.test.TestCase):
  def test_file_and_folder_are_fsynced(self):
    folder = self.create_tempdir().full_path
    synced = []
    real_fsync = os.fsync

    def spy(fd):
      synced.append(os.readlink(f"/proc/self/fd/{fd}"))
      real_fsync(fd)

    path = os.path.join(folder, "a.bin")
    with mock.patch.object(os, "fsync", spy):
      file_utils.atomic_write_bytes(path, b"data")
    self.assertLen(synced, 2)
    self.assertRegex(os.path.basename(synced[0]), file_utils.TEMP_NAME_PATTERN)
    self.assertEqual(synced[1], os.path.realpath(folder))
    synced.clear()
    with mock.patch.object(os, "fsync", spy):
      file_utils.atomic_write_dir(
        os.path.join(folder, "d"), lambda tmp: _touch(os.path.join(tmp, "f.txt"))
      )
    self.assertIn(os.path.realpath(folder), synced)  # The parent, after the rename.
    self.assertTrue(any(p.endswith("f.txt") for p in synced))

  def test_full_disk_leaves_the_old_file_and_no_temporary(self):
    folder = self.create_tempdir().full_path
    small = os.path.join(folder, "small")
    os.mkdir(small)
    mounted = (
      subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", small],
        capture_output=True,
        check=False,
      ).returncode
      == 0
    )
    if mounted:
      self.addCleanup(subprocess.run, ["umount", small], check=False)
    path = os.path.join(small, "a" + SUFFIX)
    datum_io.write_to_file(path, GOOD)
    big = np.ones(200_000, np.float32)  # 800 KB: more than the 256 KB file system.
    injected = mock.patch.object(
      os, "fsync", side_effect=OSError(errno.ENOSPC, "No space left on device")
    )
    with contextlib.nullcontext() if mounted else injected:
      with self.assertRaisesRegex(OSError, "^" + path + r": cannot write \(No space left"):
        datum_io.write_to_file(path, big)
    self.assertAllEqual(datum_io.read_from_file(path), GOOD)
    self.assertEmpty(_temp_files(small))


class ResumeTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.paths = [_touch(os.path.join(self.root, "img", f"{n}.jpg")) for n in "abcde"]
    self.out = os.path.join(self.root, "out")

  def _run(self, output_format="per_image"):
    extractor = FakeExtractor()
    summary = pipeline.run_extraction(
      extractor,
      task_sources.tasks_from_paths(self.paths),
      self.out,
      output_format=output_format,
      shard_size=3,
      log_interval=1e9,
    )
    return summary, sorted(extractor.loaded)

  def test_unparsable_per_image_outputs_are_extracted_again(self):
    self._run()
    file = lambda n: os.path.join(self.out, n + SUFFIX)  # noqa: E731
    open(file("a"), "wb").close()  # 0 bytes (a writer without fsync, power cut).
    with open(file("b"), "r+b") as f:
      f.truncate(5)
    with open(file("c"), "r+b") as f:  # Zero-filled, same size.
      f.write(b"\0" * os.path.getsize(file("c")))
    datum_io.write_to_file(file("d"), np.zeros(4, np.float32))  # A degenerate export's.
    with self.assertLogs(logger="absl", level="INFO") as logs:
      summary, loaded = self._run()
    self.assertEqual((summary.done, summary.skipped, summary.failed), (4, 1, 0))
    self.assertEqual(loaded, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    text = "\n".join(logs.output)
    self.assertIn(file("a") + ": empty file (0 bytes); extracting the image again", text)
    self.assertIn(file("b") + ": corrupt DatumProto", text)
    self.assertIn(file("d") + ": all-zero descriptor", text)
    _, matrix = descriptor_reading.read_descriptors(self.out)
    self.assertAllEqual(matrix, np.stack([GOOD] * 5))

  def test_truncated_shard_is_set_aside_and_its_images_extracted_again(self):
    self._run("shards")
    shard = os.path.join(self.out, "descriptors-00000.npz")
    with open(shard, "r+b") as f:
      f.truncate(100)
    summary, loaded = self._run("shards")
    self.assertEqual((summary.done, summary.skipped), (3, 2))
    self.assertEqual(loaded, ["a.jpg", "b.jpg", "c.jpg"])
    self.assertTrue(os.path.exists(shard + descriptor_files.CORRUPT_SUFFIX))
    ids, matrix = descriptor_reading.read_descriptors(self.out)
    self.assertCountEqual(ids, list("abcde"))
    self.assertAllEqual(matrix, np.stack([GOOD] * 5))
    with self.assertRaises(zipfile.BadZipFile):
      zipfile.ZipFile(shard + descriptor_files.CORRUPT_SUFFIX)

  def test_delg_writer_checks_both_files(self):
    class Outputs:
      local_suffix = ".delg_local"

      def output_paths(self, output_dir, image_id):
        return [os.path.join(output_dir, image_id + e) for e in (".delg_global", ".delg_local")]

    out = self.create_tempdir().full_path
    features = feature_io.serialize(
      np.zeros([1, 2]), np.ones([1]), np.ones([1, 4], np.float32), np.ones([1])
    )
    for image_id, global_bytes, local_bytes in (
      ("ok", datum_io.serialize_array(GOOD), features),
      ("no_local_features", datum_io.serialize_array(GOOD), b""),
      ("zeroed_local", datum_io.serialize_array(GOOD), b"\0" * len(features)),
      ("empty_global", b"", features),
      ("no_global", None, features),
    ):
      if global_bytes is not None:
        _touch(os.path.join(out, image_id + ".delg_global"), global_bytes)
      _touch(os.path.join(out, image_id + ".delg_local"), local_bytes)
    writer = local_extractor.LocalGlobalWriter(out, Outputs())
    self.assertEqual(writer.existing_ids(), {"ok", "no_local_features"})


if __name__ == "__main__":
  tf.test.main()
