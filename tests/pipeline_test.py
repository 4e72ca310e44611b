"""Tests for dolg_tf.extraction.pipeline: batch extraction, failures, resume, shards."""

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from unittest import mock

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.extraction import failure_log, output_folder, pipeline, run_interface, task_sources
from dolg_tf.io import datum_io, descriptor_files, descriptor_reading
from dolg_tf.utils import files as file_utils
from tests import testutil

SUFFIX = ".dolg_global"
ONE_SCALE = config_lib.ExportConfig(image_scales=(1.0,))


class CountingExtractor:
  """Delegates to an extractor.Extractor and counts the model calls."""

  def __init__(self, inner):
    self.inner = inner
    self.suffix = inner.suffix
    self.calls = 0

  def load_and_preprocess(self, path, box=None):
    return self.inner.load_and_preprocess(path, box)

  def extract(self, image):
    self.calls += 1
    return self.inner.extract(image)


def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


class PipelineTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tf.compat.v1.test.get_temp_dir()
    export_dir = testutil.tiny_export("dolg", export_config=ONE_SCALE)
    config_path = os.path.join(root, "pipeline.pbtxt")
    with open(config_path, "w") as f:
      f.write(f'model_path: "{export_dir}"\nimage_scales: 0.7071\nimage_scales: 1.0\n')
      f.write("max_image_size: 48\n")
    cls.extractor = extractor_lib.Extractor.from_config_file(config_path)

  def setUp(self):
    super().setUp()
    self.images_dir = self.create_tempdir("images").full_path
    self.out = os.path.join(self.create_tempdir().full_path, "out")
    self.rng = np.random.default_rng(0)

  def _save(self, name, mode="RGB", size=(40, 30)):
    array = self.rng.integers(0, 256, [size[1], size[0], 3], dtype=np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
      image = image.convert(mode)
    path = os.path.join(self.images_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)
    return path

  def _mixed_folder(self):
    """Two good RGB images, a grayscale PNG, a CMYK JPEG, a corrupt file, a missing entry."""
    good = [
      self._save("a.jpg"),
      self._save(os.path.join("sub", "b.png"), size=(70, 50)),
      self._save("gray.png", mode="L"),
      self._save("cmyk.jpg", mode="CMYK"),
    ]
    corrupt = os.path.join(self.images_dir, "corrupt.jpg")
    with open(corrupt, "wb") as f:
      f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    missing = os.path.join(self.images_dir, "missing.jpg")
    return good, corrupt, missing

  def _run(self, tasks, extractor=None, **kwargs):
    return pipeline.run_extraction(
      extractor or CountingExtractor(self.extractor), tasks, self.out, **kwargs
    )

  def test_odd_inputs_give_a_descriptor_or_a_failure_entry_and_no_partial_output(self):
    full = self._save("full.jpg", size=(64, 48))
    with open(full, "rb") as f:
      data = f.read()
    truncated = os.path.join(self.images_dir, "truncated.jpg")
    with open(truncated, "wb") as f:
      f.write(data[: len(data) // 2])
    text = os.path.join(self.images_dir, "text.jpg")
    with open(text, "w") as f:
      f.write("this is a text file\n")
    empty = os.path.join(self.images_dir, "empty.jpg")
    open(empty, "wb").close()
    tiny = self._save("tiny.png", size=(1, 1))
    huge = os.path.join(self.images_dir, "huge.jpg")
    Image.new("RGB", (10000, 8000), (120, 30, 200)).save(huge, quality=50)
    cmyk = self._save("cmyk.jpg", mode="CMYK")
    gray16 = os.path.join(self.images_dir, "gray16.png")
    Image.fromarray(np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)).save(gray16)
    paths = [full, truncated, text, empty, tiny, huge, cmyk, gray16]
    summary = self._run(task_sources.tasks_from_paths(paths))
    failures = {
      row["image_id"]: row["reason"]
      for row in failure_log.read_failures(os.path.join(self.out, failure_log.FAILURES_FILE))
    }
    written = {n[: -len(SUFFIX)] for n in os.listdir(self.out) if n.endswith(SUFFIX)}
    for path in paths:
      image_id = task_sources.image_id_from_path(path)
      # Exactly one of: a descriptor file, or a failures entry with a reason.
      self.assertNotEqual(image_id in written, image_id in failures, image_id)
      if image_id in written:
        descriptor = datum_io.read_from_file(os.path.join(self.out, image_id + SUFFIX))
        self.assertAllClose(np.linalg.norm(descriptor), 1.0, atol=1e-5)
      else:
        self.assertNotEmpty(failures[image_id])
    for image_id in ("full", "huge", "cmyk", "gray16"):
      self.assertIn(image_id, written)
    for image_id in ("text", "empty", "tiny"):
      self.assertIn(image_id, failures)
    # DELF extracts nothing under 10 x 10 px: a failure with the reason, no descriptor.
    self.assertIn("tiny.png: image too small (1x1", failures["tiny"])
    self.assertEqual(summary.done + summary.failed, len(paths))
    leftovers = [n for n in os.listdir(self.out) if n.endswith(".tmp") or n.startswith(".")]
    self.assertEqual(leftovers, [])

  def test_good_images_are_written_and_bad_ones_listed_with_reasons(self):
    good, corrupt, missing = self._mixed_folder()
    paths = task_sources.list_images(self.images_dir)
    self.assertCountEqual(paths, good + [corrupt])
    tasks = task_sources.tasks_from_paths(paths + [missing])
    counting = CountingExtractor(self.extractor)
    summary = self._run(tasks, counting, num_threads=2, prefetch=2)
    self.assertEqual((summary.total, summary.done, summary.skipped, summary.failed), (6, 4, 0, 2))
    self.assertEqual(summary.exit_code, 0)
    self.assertEqual(counting.calls, 4)
    for path in good:
      image_id = task_sources.image_id_from_path(path)
      descriptor = datum_io.read_from_file(os.path.join(self.out, image_id + SUFFIX))
      self.assertAllClose(descriptor, self.extractor.extract_from_file(path), atol=1e-6)
    rows = failure_log.read_failures(os.path.join(self.out, failure_log.FAILURES_FILE))
    reasons = {row["image_id"]: row for row in rows}
    self.assertCountEqual(reasons, ["corrupt", "missing"])
    self.assertEqual(reasons["corrupt"]["path"], corrupt)
    self.assertIn("corrupt.jpg", reasons["corrupt"]["reason"])
    self.assertIn("file not found", reasons["missing"]["reason"])
    self.assertEqual([n for n in os.listdir(self.out) if n.endswith(".tmp")], [])

    # A second run reads nothing that is done and runs no forward pass.
    mtimes = {n: os.stat(os.path.join(self.out, n)).st_mtime_ns for n in os.listdir(self.out)}
    again = CountingExtractor(self.extractor)
    with mock.patch.object(again, "load_and_preprocess", wraps=again.load_and_preprocess) as loads:
      summary = self._run(tasks, again)
    self.assertEqual((summary.done, summary.skipped, summary.failed), (0, 4, 2))
    self.assertEqual(again.calls, 0)
    self.assertCountEqual([c.args[0] for c in loads.call_args_list], [corrupt, missing])
    for name, mtime in mtimes.items():
      if name.endswith(SUFFIX):
        self.assertEqual(os.stat(os.path.join(self.out, name)).st_mtime_ns, mtime, name)
    self.assertEqual(summary.exit_code, 0)
    # One row per image: the rerun's failures replace the first run's.
    rows = failure_log.read_failures(os.path.join(self.out, failure_log.FAILURES_FILE))
    self.assertCountEqual([r["image_id"] for r in rows], ["corrupt", "missing"])

  def test_an_interrupted_write_leaves_no_half_written_output(self):
    paths = [self._save(f"im{i}.jpg") for i in range(3)]
    tasks = task_sources.tasks_from_paths(paths)
    os.makedirs(self.out)
    # A killed run's temporary file, as file_utils.atomic_write_bytes names them.
    stale = os.path.join(self.out, f".im0{SUFFIX}.{_dead_pid()}.0123abcd.tmp")
    with open(stale, "wb") as f:
      f.write(b"\x0a\x02half")
    # A live process's temporary file is left alone.
    live = os.path.join(self.out, f".other.{os.getpid()}.0123abcd.tmp")
    open(live, "wb").close()
    # This run is interrupted while writing the second descriptor, between
    # writing its temporary file and renaming it.
    real_replace = os.replace
    calls = []

    def interrupt_second(src, dst):
      calls.append(dst)
      if len(calls) == 2:
        raise KeyboardInterrupt
      real_replace(src, dst)

    with mock.patch("os.replace", side_effect=interrupt_second):
      with self.assertRaises(KeyboardInterrupt):
        self._run(tasks, prefetch=1)
    self.assertFalse(os.path.exists(stale))
    self.assertTrue(os.path.exists(live))
    os.unlink(live)
    outputs = sorted(n for n in os.listdir(self.out) if n.endswith(SUFFIX))
    self.assertEqual(outputs, [f"im0{SUFFIX}"])
    self.assertFalse(os.path.exists(os.path.join(self.out, output_folder.LOCK_FILE)))
    # The next run finishes the job, extracting only what is missing.
    counting = CountingExtractor(self.extractor)
    summary = self._run(tasks, counting)
    self.assertEqual((summary.done, summary.skipped, summary.failed), (2, 1, 0))
    self.assertEqual(counting.calls, 2)
    ids, matrix = descriptor_reading.read_descriptors(self.out)
    self.assertEqual(ids, ["im0", "im1", "im2"])
    self.assertEqual(matrix.shape, (3, 16))
    self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".")], [])

  def test_shards_round_trip_and_resume(self):
    paths = [self._save(f"img{i}.png") for i in range(5)]
    tasks = task_sources.tasks_from_paths(paths)
    summary = self._run(tasks[:4], output_format="shards", shard_size=3)
    self.assertEqual((summary.done, summary.failed), (4, 0))
    self.assertEqual(
      sorted(n for n in os.listdir(self.out) if n.endswith(".npz")),
      ["descriptors-00000.npz", "descriptors-00001.npz"],
    )
    with np.load(os.path.join(self.out, "descriptors-00000.npz"), allow_pickle=False) as shard:
      self.assertEqual(shard["descriptors"].dtype, np.float32)
      self.assertEqual(shard["descriptors"].shape, (3, 16))
      self.assertEqual(list(shard["ids"]), ["img0", "img1", "img2"])
    # Resume with one more image: only it is extracted, into a new shard.
    counting = CountingExtractor(self.extractor)
    summary = self._run(tasks, counting, output_format="shards", shard_size=3)
    self.assertEqual((summary.done, summary.skipped, counting.calls), (1, 4, 1))
    with open(os.path.join(self.out, descriptor_files.MANIFEST_FILE)) as f:
      manifest = json.load(f)
    self.assertEqual(manifest["num_descriptors"], 5)
    self.assertEqual(manifest["dim"], 16)
    self.assertEqual([s["count"] for s in manifest["shards"]], [3, 1, 1])

    ids, matrix = descriptor_reading.read_descriptors(self.out)
    self.assertEqual(ids, [f"img{i}" for i in range(5)])
    expected = np.stack([self.extractor.extract_from_file(p) for p in paths])
    self.assertAllClose(matrix, expected, atol=1e-6)
    ids, subset = descriptor_reading.read_descriptors(
      os.path.join(self.out, "*.npz"), ids=["img4", "img1"]
    )
    self.assertEqual(ids, ["img4", "img1"])
    self.assertAllClose(subset, expected[[4, 1]], atol=1e-6)
    with self.assertRaisesRegex(KeyError, "nope"):
      descriptor_reading.read_descriptors(self.out, ids=["nope"])

    # The per-image form of the same images reads back identically.
    per_image = os.path.join(self.create_tempdir().full_path, "per_image")
    pipeline.run_extraction(CountingExtractor(self.extractor), tasks, per_image)
    ids2, matrix2 = descriptor_reading.read_descriptors(per_image, ids=ids)
    self.assertAllClose(matrix2, expected[[4, 1]], atol=1e-6)
    _, matrix3 = descriptor_reading.read_descriptors(os.path.join(per_image, "*" + SUFFIX))
    self.assertAllClose(matrix3, expected, atol=1e-6)

  def test_an_interrupted_shard_write_leaves_no_shard(self):
    paths = [self._save(f"s{i}.jpg") for i in range(3)]
    tasks = task_sources.tasks_from_paths(paths)

    def die_midway(f, **arrays):
      f.write(b"PK\x03\x04partial")
      raise KeyboardInterrupt

    with mock.patch.object(descriptor_files.np, "savez", side_effect=die_midway):
      with self.assertRaises(KeyboardInterrupt):
        self._run(tasks, output_format="shards", shard_size=2)
    self.assertEqual(os.listdir(self.out), [])
    summary = self._run(tasks, output_format="shards", shard_size=2)
    self.assertEqual((summary.done, summary.skipped), (3, 0))
    ids, _ = descriptor_reading.read_descriptors(self.out)
    self.assertEqual(ids, ["s0", "s1", "s2"])

  def test_exit_status_rule(self):
    bad = os.path.join(self.images_dir, "bad.jpg")
    with open(bad, "wb") as f:
      f.write(b"not an image")
    summary = self._run(task_sources.tasks_from_paths([bad, bad.replace("bad", "gone")]))
    self.assertEqual((summary.done, summary.failed), (0, 2))
    self.assertEqual(summary.exit_code, 1)  # work to do, nothing succeeded
    self.assertEqual(self._run([]).exit_code, 0)  # nothing to do
    good = self._save("good.jpg")
    tasks = task_sources.tasks_from_paths([bad, good])
    self.assertEqual(self._run(tasks).exit_code, 0)  # one success is enough
    rerun = self._run(tasks)  # only the known-bad file is left to try
    self.assertEqual((rerun.done, rerun.skipped, rerun.failed), (0, 1, 1))
    self.assertEqual(rerun.exit_code, 0)

  def test_extraction_errors_are_failures_not_crashes(self):
    paths = [self._save(f"e{i}.jpg") for i in range(3)]

    class Flaky(CountingExtractor):
      def extract(self, image):
        self.calls += 1
        if self.calls == 2:
          raise tf.errors.InvalidArgumentError(None, None, "bad shape\nmore detail")
        return self.inner.extract(image)

    summary = self._run(task_sources.tasks_from_paths(paths), Flaky(self.extractor))
    self.assertEqual((summary.done, summary.failed), (2, 1))
    self.assertIn("extraction failed: InvalidArgumentError: bad shape", summary.failures[0][2])

  def test_inputs(self):
    a = self._save("x/A.JPG")
    self._save("x/b.webp")
    with open(os.path.join(self.images_dir, "notes.txt"), "w") as f:
      f.write("not an image")
    self.assertEqual(
      [os.path.relpath(p, self.images_dir) for p in task_sources.list_images(self.images_dir)],
      ["x/A.JPG", "x/b.webp"],
    )
    list_path = os.path.join(self.images_dir, "list.txt")
    self._save("c.jpg")
    with open(list_path, "w") as f:
      f.write("# comment\nx/A.JPG\n\n  c  \nabsent.png\n")
    self.assertEqual(
      task_sources.read_image_list(list_path, self.images_dir),
      [a, os.path.join(self.images_dir, "c.jpg"), os.path.join(self.images_dir, "absent.png")],
    )
    with self.assertRaisesRegex(FileNotFoundError, "nolist.txt"):
      task_sources.read_image_list(os.path.join(self.images_dir, "nolist.txt"))
    first, second = task_sources.tasks_from_paths(
      ["p/A.jpg", "q/A.png"]
    )  # No longer refused whole.
    self.assertEqual(first.refused, "")
    self.assertStartsWith(second.refused, "duplicate image id 'A': already used by p/A.jpg")
    tasks = task_sources.tasks_from_paths(["p/A.jpg"], boxes={"A": [1, 2, 3, 4]})
    self.assertEqual(tasks[0].box, (1.0, 2.0, 3.0, 4.0))

  # --------------------------------------------------------------------------- inputs

  def test_tiff_and_hidden_names(self):
    tif = self._save("t.tif")
    tiff = self._save("sub/u.TIFF")
    self._save(".hidden.jpg")
    self._save(".cache/v.jpg")
    self.assertEqual(task_sources.list_images(self.images_dir), [tiff, tif])  # sorted
    hidden = os.path.join(self.images_dir, ".hidden.jpg")
    counting = CountingExtractor(self.extractor)
    with mock.patch.object(
      counting, "load_and_preprocess", wraps=counting.load_and_preprocess
    ) as loads:
      summary = self._run(task_sources.tasks_from_paths([tif, tiff, hidden]), counting)
    self.assertEqual((summary.done, summary.failed), (2, 1))
    self.assertNotIn(hidden, [c.args[0] for c in loads.call_args_list])  # Never read.
    self.assertEqual(summary.failures, [(".hidden", hidden, task_sources.HIDDEN_REASON)])
    self.assertFalse(any(n.startswith(".") for n in os.listdir(self.out)))
    self.assertAllClose(
      datum_io.read_from_file(os.path.join(self.out, "t" + SUFFIX)),
      self.extractor.extract_from_file(tif),
      atol=1e-6,
    )
    # Each rerun reports it again, as one row.
    again = self._run(task_sources.tasks_from_paths([tif, tiff, hidden]))
    self.assertEqual((again.done, again.skipped, again.failed), (0, 2, 1))
    rows = failure_log.read_failures(os.path.join(self.out, failure_log.FAILURES_FILE))
    self.assertEqual(
      [(r["image_id"], r["reason"]) for r in rows], [(".hidden", task_sources.HIDDEN_REASON)]
    )

  def test_max_pixels(self):
    small, large = self._save("small.png", size=(20, 20)), self._save("large.png", size=(40, 30))
    tasks = task_sources.tasks_from_paths([small, large])
    summary = self._run(tasks, self.extractor, max_pixels=400)
    self.assertEqual((summary.done, summary.failed), (1, 1))
    self.assertIn(
      "large.png: image too large (40x30 = 1200 pixels > limit 400)", summary.failures[0][2]
    )
    with self.assertRaisesRegex(ValueError, "max_pixels"):
      self._run(tasks, max_pixels=400)  # CountingExtractor has no preprocess.

  # --------------------------------------------------------------------------- failures.tsv

  def test_failures_file_has_one_row_per_image_and_loses_fixed_ones(self):
    good = self._save("good.jpg")
    bad = os.path.join(self.images_dir, "bad.jpg")
    with open(bad, "wb") as f:
      f.write(b"not an image")
    failures_path = os.path.join(self.out, failure_log.FAILURES_FILE)
    # A row of an image of another list is kept throughout.
    os.makedirs(self.out)
    with open(failures_path, "w") as f:
      f.write(failure_log.FailureLog.HEADER + "2020-01-01T00:00:00\tother\t/x/other.jpg\tgone\n")
    tasks = task_sources.tasks_from_paths([good, bad])
    for _ in range(3):
      self._run(tasks)
      rows = failure_log.read_failures(failures_path)
      self.assertEqual([r["image_id"] for r in rows], ["other", "bad"])
    self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".")], [])
    # Fixed: the next run extracts it and removes its row.
    self._save("bad.jpg")
    summary = self._run(tasks)
    self.assertEqual((summary.done, summary.skipped, summary.failed), (1, 1, 0))
    self.assertEqual([r["image_id"] for r in failure_log.read_failures(failures_path)], ["other"])
    # An image done meanwhile (e.g. by another list's run) loses its row too.
    with open(failures_path, "a") as f:
      f.write("2020-01-01T00:00:00\tgood\t/y/good.jpg\told reason\n")
    self._run(tasks)
    self.assertEqual([r["image_id"] for r in failure_log.read_failures(failures_path)], ["other"])
    # The file goes when no row is left.
    summary = self._run(task_sources.tasks_from_paths([self._save("other.jpg")]))
    self.assertEqual(summary.done, 1)
    self.assertFalse(os.path.exists(failures_path))

  def test_a_failed_write_of_one_image_is_a_failure_and_the_run_goes_on(self):
    paths = [self._save(f"w{i}.jpg") for i in range(3)]
    real_write = datum_io.write_to_file

    def refuse_w1(path, array):
      if os.path.basename(path).startswith("w1"):
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
      real_write(path, array)

    with mock.patch.object(descriptor_files.datum_io, "write_to_file", side_effect=refuse_w1):
      summary = self._run(task_sources.tasks_from_paths(paths))
    self.assertEqual((summary.done, summary.failed, summary.stopped), (2, 1, ""))
    rows = failure_log.read_failures(os.path.join(self.out, failure_log.FAILURES_FILE))
    self.assertEqual([r["image_id"] for r in rows], ["w1"])
    self.assertIn("write failed: OSError: [Errno 36] File name too long", rows[0]["reason"])

  # --------------------------------------------------------------------------- stops

  def _assert_no_temp_or_lock(self):
    self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".")], [])
    self.assertEqual([t.name for t in threading.enumerate() if t.name == "descriptor-writer"], [])

  def test_full_or_read_only_disk_stops_the_run_and_the_next_run_redoes_the_rest(self):
    paths = [self._save(f"d{i}.jpg") for i in range(4)]
    tasks = task_sources.tasks_from_paths(paths)
    real_write = datum_io.write_to_file
    cases = [
      (errno.ENOSPC, "disk full"),
      (errno.EROFS, "read-only file system"),
      (errno.EACCES, "permission denied"),
    ]
    for code, what in cases:
      with self.subTest(what):
        self.out = os.path.join(self.create_tempdir().full_path, "out")
        calls = []

        def second_write_fails(path, array, code=code, calls=calls):
          calls.append(path)
          if len(calls) < 2:
            return real_write(path, array)
          # Half a file under its temporary name, then the error: as a full disk does.
          with open(file_utils.temp_path(path), "wb") as f:
            f.write(b"\x0a\x02half")
          raise OSError(f"{path}: cannot write ({os.strerror(code)})") from OSError(
            code, os.strerror(code)
          )

        counting = CountingExtractor(self.extractor)
        with mock.patch.object(
          descriptor_files.datum_io, "write_to_file", side_effect=second_write_fails
        ):
          with self.assertRaises(run_interface.ExtractionStopped) as raised:
            self._run(tasks, counting, prefetch=1)
        message = str(raised.exception)
        self.assertEqual(len(message.splitlines()), 1)
        self.assertIn(f"{self.out}: extraction stopped ({what}): ", message)
        self.assertIn(f"d1{SUFFIX}: cannot write ({os.strerror(code)})", message)
        self.assertIn("this run wrote 1, failed 0, left 3 not written", message)
        self.assertEqual(raised.exception.summary.stopped, what)
        self.assertEqual(len(calls), 2)  # Nothing written after the error.
        self.assertEqual(sorted(os.listdir(self.out)), [f"d0{SUFFIX}"])  # No failures.tsv
        self._assert_no_temp_or_lock()
        # The images not written are not "done": the next run extracts them.
        summary = self._run(tasks)
        self.assertEqual((summary.done, summary.skipped, summary.failed), (3, 1, 0))

  def test_full_disk_in_shards_mode_writes_no_shard(self):
    tasks = task_sources.tasks_from_paths([self._save(f"s{i}.jpg") for i in range(3)])

    def full(f, **arrays):
      f.write(b"PK\x03\x04partial")
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with mock.patch.object(descriptor_files.np, "savez", side_effect=full):
      with self.assertRaisesRegex(
        run_interface.ExtractionStopped, r"extraction stopped \(disk full\).* left 3 not written"
      ):
        self._run(tasks, output_format="shards", shard_size=2)
    self.assertEqual(os.listdir(self.out), [])
    self._assert_no_temp_or_lock()
    summary = self._run(tasks, output_format="shards", shard_size=2)
    self.assertEqual((summary.done, summary.skipped), (3, 0))

  def test_an_unwritable_failures_file_stops_the_run_with_one_line(self):
    paths = [self._save(f"f{i}.jpg") for i in range(3)]
    tasks = task_sources.tasks_from_paths(paths)
    # In the writer thread: a write fails, and so does recording it.
    real_write = datum_io.write_to_file

    def refuse_f1(path, array):
      if os.path.basename(path).startswith("f1"):
        raise ValueError("unsupported")
      real_write(path, array)

    failures_path = os.path.join(self.out, failure_log.FAILURES_FILE)
    real_atomic = file_utils.atomic_write_text

    def broken_failures_file(path, text, **kwargs):
      if path == failures_path:
        raise OSError(f"{path}: cannot write (Input/output error)") from OSError(
          errno.EIO, os.strerror(errno.EIO)
        )
      return real_atomic(path, text, **kwargs)

    with mock.patch.object(descriptor_files.datum_io, "write_to_file", side_effect=refuse_f1):
      with mock.patch.object(
        failure_log.file_utils, "atomic_write_text", side_effect=broken_failures_file
      ):
        with self.assertRaises(run_interface.ExtractionStopped) as raised:
          self._run(tasks, prefetch=1)
    message = str(raised.exception)
    self.assertEqual(len(message.splitlines()), 1)
    self.assertIn(f"{failures_path}: cannot write the failures file (Input/output error)", message)
    self._assert_no_temp_or_lock()
    # In the main thread: failures.tsv is a folder.
    os.remove(os.path.join(self.out, f"f0{SUFFIX}"))
    os.mkdir(failures_path)
    with self.assertRaisesRegex(
      output_folder.OutputError, "failures.tsv: cannot read the failures file"
    ):
      self._run(tasks)
    self._assert_no_temp_or_lock()

  # --------------------------------------------------------------------------- output folder

  def test_output_folder_is_checked_and_locked_before_any_image_is_read(self):
    tasks = task_sources.tasks_from_paths([self._save("o.jpg")])
    counting = CountingExtractor(self.extractor)
    with open(self.out, "w") as f:
      f.write("a file")
    with mock.patch.object(counting, "load_and_preprocess") as loads:
      with self.assertRaisesRegex(
        output_folder.OutputError, f"^{self.out}: output folder is a file, not a folder$"
      ):
        self._run(tasks, counting)
      os.remove(self.out)
      os.makedirs(self.out)
      with output_folder.OutputLock(self.out):  # Another open of the lock file.
        with self.assertRaisesRegex(
          output_folder.OutputError,
          rf"^{self.out}: output folder in use by another extraction "
          rf"\(pid {os.getpid()} on {socket.gethostname()}\)",
        ):
          self._run(tasks, counting)
      loads.assert_not_called()
    self.assertEqual(self._run(tasks).done, 1)  # Released: the next run goes ahead.


if __name__ == "__main__":
  tf.test.main()
