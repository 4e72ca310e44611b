"""Tests for dolg_tf.extraction.pipeline: batch extraction, failures, resume, shards."""

import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.extraction import descriptor_store, pipeline
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import datum_io
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
    summary = self._run(pipeline.tasks_from_paths(paths))
    failures = {
      row["image_id"]: row["reason"]
      for row in pipeline.read_failures(os.path.join(self.out, pipeline.FAILURES_FILE))
    }
    written = {n[: -len(SUFFIX)] for n in os.listdir(self.out) if n.endswith(SUFFIX)}
    for path in paths:
      image_id = pipeline.image_id_from_path(path)
      # Exactly one of: a descriptor file, or a failures entry with a reason.
      self.assertNotEqual(image_id in written, image_id in failures, image_id)
      if image_id in written:
        descriptor = datum_io.read_from_file(os.path.join(self.out, image_id + SUFFIX))
        self.assertAllClose(np.linalg.norm(descriptor), 1.0, atol=1e-5)
      else:
        self.assertNotEmpty(failures[image_id])
    for image_id in ("full", "tiny", "huge", "cmyk", "gray16"):
      self.assertIn(image_id, written)
    for image_id in ("text", "empty"):
      self.assertIn(image_id, failures)
    self.assertEqual(summary.done + summary.failed, len(paths))
    leftovers = [n for n in os.listdir(self.out) if n.endswith(".tmp") or n.startswith(".")]
    self.assertEqual(leftovers, [])

  def test_good_images_are_written_and_bad_ones_listed_with_reasons(self):
    good, corrupt, missing = self._mixed_folder()
    paths = pipeline.list_images(self.images_dir)
    self.assertCountEqual(paths, good + [corrupt])
    tasks = pipeline.tasks_from_paths(paths + [missing])
    counting = CountingExtractor(self.extractor)
    summary = self._run(tasks, counting, num_threads=2, prefetch=2)
    self.assertEqual((summary.total, summary.done, summary.skipped, summary.failed), (6, 4, 0, 2))
    self.assertEqual(summary.exit_code, 0)
    self.assertEqual(counting.calls, 4)
    for path in good:
      image_id = pipeline.image_id_from_path(path)
      descriptor = datum_io.read_from_file(os.path.join(self.out, image_id + SUFFIX))
      self.assertAllClose(descriptor, self.extractor.extract_from_file(path), atol=1e-6)
    rows = pipeline.read_failures(os.path.join(self.out, pipeline.FAILURES_FILE))
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
    # Failures are appended per run, under one header.
    rows = pipeline.read_failures(os.path.join(self.out, pipeline.FAILURES_FILE))
    self.assertEqual(len(rows), 4)

  def test_an_interrupted_write_leaves_no_half_written_output(self):
    paths = [self._save(f"im{i}.jpg") for i in range(3)]
    tasks = pipeline.tasks_from_paths(paths)
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
    # The next run finishes the job, extracting only what is missing.
    counting = CountingExtractor(self.extractor)
    summary = self._run(tasks, counting)
    self.assertEqual((summary.done, summary.skipped, summary.failed), (2, 1, 0))
    self.assertEqual(counting.calls, 2)
    ids, matrix = pipeline.read_descriptors(self.out)
    self.assertEqual(ids, ["im0", "im1", "im2"])
    self.assertEqual(matrix.shape, (3, 16))
    self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".")], [])

  def test_shards_round_trip_and_resume(self):
    paths = [self._save(f"img{i}.png") for i in range(5)]
    tasks = pipeline.tasks_from_paths(paths)
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
    with open(os.path.join(self.out, descriptor_store.MANIFEST_FILE)) as f:
      manifest = json.load(f)
    self.assertEqual(manifest["num_descriptors"], 5)
    self.assertEqual(manifest["dim"], 16)
    self.assertEqual([s["count"] for s in manifest["shards"]], [3, 1, 1])

    ids, matrix = pipeline.read_descriptors(self.out)
    self.assertEqual(ids, [f"img{i}" for i in range(5)])
    expected = np.stack([self.extractor.extract_from_file(p) for p in paths])
    self.assertAllClose(matrix, expected, atol=1e-6)
    ids, subset = pipeline.read_descriptors(os.path.join(self.out, "*.npz"), ids=["img4", "img1"])
    self.assertEqual(ids, ["img4", "img1"])
    self.assertAllClose(subset, expected[[4, 1]], atol=1e-6)
    with self.assertRaisesRegex(KeyError, "nope"):
      pipeline.read_descriptors(self.out, ids=["nope"])

    # The per-image form of the same images reads back identically.
    per_image = os.path.join(self.create_tempdir().full_path, "per_image")
    pipeline.run_extraction(CountingExtractor(self.extractor), tasks, per_image)
    ids2, matrix2 = pipeline.read_descriptors(per_image, ids=ids)
    self.assertAllClose(matrix2, expected[[4, 1]], atol=1e-6)
    _, matrix3 = pipeline.read_descriptors(os.path.join(per_image, "*" + SUFFIX))
    self.assertAllClose(matrix3, expected, atol=1e-6)

  def test_an_interrupted_shard_write_leaves_no_shard(self):
    paths = [self._save(f"s{i}.jpg") for i in range(3)]
    tasks = pipeline.tasks_from_paths(paths)

    def die_midway(f, **arrays):
      f.write(b"PK\x03\x04partial")
      raise KeyboardInterrupt

    with mock.patch.object(descriptor_store.np, "savez", side_effect=die_midway):
      with self.assertRaises(KeyboardInterrupt):
        self._run(tasks, output_format="shards", shard_size=2)
    self.assertEqual(os.listdir(self.out), [])
    summary = self._run(tasks, output_format="shards", shard_size=2)
    self.assertEqual((summary.done, summary.skipped), (3, 0))
    ids, _ = pipeline.read_descriptors(self.out)
    self.assertEqual(ids, ["s0", "s1", "s2"])

  def test_exit_status_rule(self):
    bad = os.path.join(self.images_dir, "bad.jpg")
    with open(bad, "wb") as f:
      f.write(b"not an image")
    summary = self._run(pipeline.tasks_from_paths([bad, bad.replace("bad", "gone")]))
    self.assertEqual((summary.done, summary.failed), (0, 2))
    self.assertEqual(summary.exit_code, 1)  # work to do, nothing succeeded
    self.assertEqual(self._run([]).exit_code, 0)  # nothing to do
    good = self._save("good.jpg")
    tasks = pipeline.tasks_from_paths([bad, good])
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

    summary = self._run(pipeline.tasks_from_paths(paths), Flaky(self.extractor))
    self.assertEqual((summary.done, summary.failed), (2, 1))
    self.assertIn("extraction failed: InvalidArgumentError: bad shape", summary.failures[0][2])

  def test_inputs(self):
    a = self._save("x/A.JPG")
    self._save("x/b.webp")
    with open(os.path.join(self.images_dir, "notes.txt"), "w") as f:
      f.write("not an image")
    self.assertEqual(
      [os.path.relpath(p, self.images_dir) for p in pipeline.list_images(self.images_dir)],
      ["x/A.JPG", "x/b.webp"],
    )
    list_path = os.path.join(self.images_dir, "list.txt")
    self._save("c.jpg")
    with open(list_path, "w") as f:
      f.write("# comment\nx/A.JPG\n\n  c  \nabsent.png\n")
    self.assertEqual(
      pipeline.read_image_list(list_path, self.images_dir),
      [a, os.path.join(self.images_dir, "c.jpg"), os.path.join(self.images_dir, "absent.png")],
    )
    with self.assertRaisesRegex(FileNotFoundError, "nolist.txt"):
      pipeline.read_image_list(os.path.join(self.images_dir, "nolist.txt"))
    with self.assertRaisesRegex(ValueError, "image id 'A' already used"):
      pipeline.tasks_from_paths(["p/A.jpg", "q/A.png"])
    tasks = pipeline.tasks_from_paths(["p/A.jpg"], boxes={"A": [1, 2, 3, 4]})
    self.assertEqual(tasks[0].box, (1.0, 2.0, 3.0, 4.0))


if __name__ == "__main__":
  tf.test.main()
