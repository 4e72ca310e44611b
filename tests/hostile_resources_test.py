"""Issue 25 (B): only regular files are images, reads and decoded memory are bounded by bytes.

* special files (/dev/zero, named pipes, sockets, directories) named as images
  are refused from the open descriptor, never read or waited on: one
  failures.tsv row each, the run finishes;
* files over images.MAX_FILE_BYTES are refused before reading, and no more than
  the limit + 1 byte is ever read;
* decoding memory is estimated from the header and refused over
  images.MAX_IMAGE_BYTES; convert_mode works in bands of rows with the same
  8-bit results as the float64 formulas it replaces;
* extraction's loader threads share a byte budget (utils/memory_budget.py):
  bounded, released on failures, never deadlocked by images waiting for a
  batch; an image larger than the whole budget is a failure;
* the proof: the extraction command's peak RSS over a folder of worst-case
  files (16-bit grey PNGs and a float TIFF of ~100 Mpixels, a few hundred KB
  each) stays under 2.5 GB at default settings and with --num_threads=4.
"""

import errno
import io
import os
import socket
import subprocess
import sys
import threading
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from PIL import Image, ImageFile, ImageOps

from dolg_tf import config as config_lib
from dolg_tf.data import image_codec
from dolg_tf.extraction import failure_log, pipeline, task_sources
from dolg_tf.io import descriptor_files, descriptor_reading, image_loading
from dolg_tf.utils import images, pixel_modes
from dolg_tf.utils import memory_budget as budget_lib
from tests import testutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_SCALE = config_lib.ExportConfig(image_scales=(1.0,))
COMMAND = "dolg_tf.extraction.extract_features"
# The goal of issue 25: extraction's peak RSS, whatever the folder holds.
MAX_PEAK_RSS_BYTES = 2.5e9
# Runs a command and prints its peak RSS (KB): a fresh process, so no other child counts.
RSS_WRAPPER = (
  "import resource, subprocess, sys\n"
  "code = subprocess.run(sys.argv[1:]).returncode\n"
  "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
  "sys.exit(code)\n"
)


def _env():
  return dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")


def _mkfifo(path):
  os.mkfifo(path)
  return path


def _socket_file(path):
  server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  cwd = os.getcwd()
  os.chdir(os.path.dirname(path))  # A relative name: socket paths are limited to 107 bytes.
  try:
    server.bind(os.path.basename(path))  # The socket file stays after the socket is closed.
  finally:
    os.chdir(cwd)
    server.close()
  return path


def _symlink_to_dev_zero(path):
  os.symlink("/dev/zero", path)
  return path


def _directory(path):
  os.mkdir(path)
  return path


SPECIAL_FILES = [
  ("dev_zero_link", _symlink_to_dev_zero, "a character device"),
  ("fifo", _mkfifo, "a named pipe"),
  ("socket", _socket_file, "a socket"),
  ("directory", _directory, "a directory"),
]


def _encode(image, **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, **kwargs)
  return buffer.getvalue()


def _in_thread(function, *args):
  """Runs function(*args) in a daemon thread; (finished, result or exception)."""
  outcome = []

  def target():
    try:
      outcome.append(function(*args))
    except BaseException as e:  # pylint: disable=broad-except
      outcome.append(e)

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(timeout=120)  # A hang guard only: the work takes well under a second.
  return not thread.is_alive(), (outcome[0] if outcome else None)


class SpecialFilesTest(parameterized.TestCase, tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  @parameterized.named_parameters(*SPECIAL_FILES)
  def test_refused_naming_the_file_and_its_kind(self, make, kind):
    path = make(os.path.join(self.dir, "x.jpg"))
    expected = (
      f"^{path}: cannot read \\({kind}, not a regular file: only regular files are images\\)$"
    )
    for read in (images.read_file, images.decode_image, image_loading.load_image):
      finished, result = _in_thread(read, path)
      self.assertTrue(finished, f"{read.__name__} blocked on {kind}")
      self.assertIsInstance(result, images.ImageError)
      self.assertRegex(str(result), expected)
    # The dataset builder's worker: a reason, never an exception.
    finished, result = _in_thread(image_codec.prepare_task, ("x", path))
    self.assertTrue(finished)
    image_id, prepared, reason = result
    self.assertEqual((image_id, prepared), ("x", None))
    self.assertRegex(reason, expected)

  def test_a_fifo_swapped_in_after_the_path_check_is_refused_from_the_descriptor(self):
    path = _mkfifo(os.path.join(self.dir, "swap.jpg"))
    regular = os.stat(__file__)  # What the path looked like when it was checked.
    with mock.patch.object(images.os, "stat", return_value=regular):
      finished, result = _in_thread(images.read_file, path)
    self.assertTrue(finished, "opening the named pipe blocked")
    self.assertIsInstance(result, images.ImageError)
    self.assertIn(f"{path}: cannot read (a named pipe, not a regular file", str(result))

  def test_files_over_the_size_limit_are_refused_before_reading(self):
    path = os.path.join(self.dir, "big.png")
    data = _encode(Image.new("RGB", (40, 30)), format="PNG")
    with open(path, "wb") as f:
      f.write(data)
    limit = len(data) - 1
    message = f"^{path}: file too large \\({len(data)} bytes > limit {limit} bytes\\)$"
    with mock.patch.object(images, "MAX_FILE_BYTES", limit):
      with mock.patch.object(ImageFile.ImageFile, "load", side_effect=AssertionError("decoded")):
        for read in (images.read_file, images.decode_image, image_loading.load_image):
          with self.assertRaisesRegex(images.ImageError, message):
            read(path)
    self.assertEqual(images.read_file(path), data)  # The default limit takes it.
    self.assertEqual(images.MAX_FILE_BYTES, 320 * 2**20)

  def test_at_most_the_limit_plus_one_byte_is_read(self):
    path = os.path.join(self.dir, "growing.jpg")
    with open(path, "wb") as f:
      f.write(b"x" * 1000)
    small = os.stat(path)
    small = os.stat_result((small.st_mode, *small[1:6], 10, *small[7:]))  # st_size 10
    with mock.patch.object(images.os, "fstat", return_value=small):
      with self.assertRaisesRegex(
        images.ImageError, f"^{path}: file too large \\(51 bytes > limit 50 bytes\\)$"
      ):
        images.read_file(path, max_bytes=50)

  def test_unreadable_and_missing_files(self):
    missing = os.path.join(self.dir, "missing.jpg")
    with self.assertRaisesRegex(images.ImageError, f"^{missing}: file not found$"):
      images.read_file(missing)
    path = os.path.join(self.dir, "locked.jpg")
    open(path, "wb").close()
    with mock.patch.object(
      images.os, "open", side_effect=OSError(errno.EACCES, "Permission denied")
    ):
      with self.assertRaisesRegex(
        images.ImageError, f"^{path}: cannot read \\(Permission denied\\)$"
      ):
        images.read_file(path)


class DecodedMemoryTest(parameterized.TestCase, tf.test.TestCase):
  @parameterized.parameters(("1", 4), ("L", 4), ("P", 4), ("I;16", 5), ("I", 7), ("F", 7))
  def test_estimate_counts_the_decoded_mode_and_the_rgb_result(self, mode, per_pixel):
    image = Image.new(mode, (300, 200))
    expected = 1234 + 300 * 200 * per_pixel + images.WORK_BYTES
    self.assertEqual(images.estimate_decode_bytes(image, 1234), expected)
    # Extraction adds the resize (RGB array + Pillow's copy: 7 per pixel; a box 3 more).
    self.assertEqual(
      image_loading.estimate_load_bytes(image, 1234),
      max(expected, 300 * 200 * 7 + images.WORK_BYTES),
    )
    self.assertEqual(
      image_loading.estimate_load_bytes(image, 0, box=(0, 0, 5, 5)),
      300 * 200 * 10 + images.WORK_BYTES,
    )

  def test_the_defaults_take_every_image_within_the_pixel_limit(self):
    for mode in ("RGB", "I;16", "F", "CMYK"):
      header = mock.Mock(mode=mode, size=(10_000, 10_000))  # only the header is looked at
      needed = image_loading.estimate_load_bytes(header, images.MAX_FILE_BYTES, box=(0, 0, 1, 1))
      self.assertLessEqual(needed, images.MAX_IMAGE_BYTES, mode)
    self.assertEqual(image_loading.MAX_BYTES_IN_FLIGHT, images.MAX_IMAGE_BYTES)

  def test_an_image_needing_too_much_memory_is_refused_from_its_header(self):
    data = _encode(Image.new("I;16", (300, 200)), format="PNG")
    needed = len(data) + 300 * 200 * 5 + images.WORK_BYTES
    message = (
      f"^grey.png: image needs too much memory \\(300x200, mode I;16: about {needed} bytes "
      f"to decode > limit {needed - 1} bytes\\)$"
    )
    with mock.patch.object(images, "MAX_IMAGE_BYTES", needed - 1):
      with mock.patch.object(ImageFile.ImageFile, "load", side_effect=AssertionError("decoded")):
        with self.assertRaisesRegex(images.ImageError, message):
          images.decode_image(data, name="grey.png")
    self.assertEqual(images.decode_image(data, max_image_bytes=needed).shape, (200, 300, 3))

  def test_before_decode_gets_the_estimate_before_any_pixel_is_decoded(self):
    data = _encode(Image.new("F", (30, 20)), format="TIFF")
    seen = []

    def before_decode(nbytes):
      seen.append(nbytes)
      raise images.ImageError("no room")

    with mock.patch.object(ImageFile.ImageFile, "load", side_effect=AssertionError("decoded")):
      with self.assertRaisesRegex(images.ImageError, "^no room$"):
        images.decode_image(data, before_decode=before_decode)
    self.assertEqual(seen, [len(data) + 600 * 7 + images.WORK_BYTES])


class ConvertModeTest(parameterized.TestCase, tf.test.TestCase):
  """convert_mode in bands of rows gives the 8-bit values of the float64 formulas."""

  def setUp(self):
    super().setUp()
    self.enter_context(mock.patch.object(pixel_modes, "_BAND_PIXELS", 37))  # many odd bands
    self.rng = np.random.default_rng(0)

  @staticmethod
  def _reference(array, scale):
    with np.errstate(over="ignore"):  # -inf (as -1.8e308) * 255
      gray = np.clip(np.round(np.nan_to_num(array.astype(np.float64), nan=0.0) * scale), 0, 255)
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)

  def test_every_16_bit_value(self):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = self._reference(values, 255.0 / 65535.0)
    self.assertAllEqual(pixel_modes.convert_mode(Image.fromarray(values)), expected)
    big_endian = Image.frombytes("I;16B", (256, 256), values.astype(">u2").tobytes())
    self.assertAllEqual(pixel_modes.convert_mode(big_endian), expected)

  @parameterized.parameters((-(2**31), 2**31 - 1, 255.0 / 65535.0), (-5, 70000, 255.0 / 65535.0))
  def test_32_bit_integers_over_255_are_scaled(self, low, high, scale):
    values = self.rng.integers(low, high, [23, 17], endpoint=True).astype(np.int32)
    values[0, 0] = high
    image = Image.fromarray(values, "I")
    self.assertAllEqual(pixel_modes.convert_mode(image), self._reference(values, scale))

  def test_32_bit_integers_up_to_255_are_clipped(self):
    values = self.rng.integers(-9, 255, [23, 17], endpoint=True).astype(np.int32)
    self.assertAllEqual(
      pixel_modes.convert_mode(Image.fromarray(values, "I")), self._reference(values, 1)
    )

  @parameterized.parameters((1.0, 255.0), (400.0, 1.0))
  def test_floats_with_nan_and_inf(self, top, scale):
    values = (self.rng.random([23, 17]) * top).astype(np.float32)
    values[1, 2], values[3, 4] = np.nan, -np.inf
    if top > 1:
      values[5, 6] = np.inf
    image = Image.fromarray(values, "F")
    self.assertAllEqual(pixel_modes.convert_mode(image), self._reference(values, scale))

  @parameterized.parameters("RGB", "RGBA", "L", "P", "CMYK", "LA", "1")
  def test_pillow_modes_match_a_whole_image_conversion(self, mode):
    rgb = Image.fromarray(self.rng.integers(0, 256, [23, 17, 3], dtype=np.uint8))
    image = rgb.convert(mode)
    self.assertAllEqual(pixel_modes.convert_mode(image), np.asarray(image.convert("RGB")))

  @parameterized.parameters(*range(10))
  def test_exif_orientation_as_pillow(self, orientation):
    rgb = Image.fromarray(self.rng.integers(0, 256, [23, 17, 3], dtype=np.uint8))
    exif = rgb.getexif()
    exif[images.EXIF_ORIENTATION_TAG] = orientation
    data = _encode(rgb, format="PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    decoded = images.decode_image(data)
    self.assertAllEqual(decoded, expected)
    self.assertTrue(decoded.flags.c_contiguous)


class ByteBudgetTest(tf.test.TestCase):
  def _wait_until(self, condition):
    for _ in range(2000):
      if condition():
        return
      threading.Event().wait(0.01)
    self.fail("condition never reached")

  def test_tickets_are_served_in_order_and_a_large_one_is_not_starved(self):
    budget = budget_lib.ByteBudget(100)
    first, second, third = budget.ticket(), budget.ticket(), budget.ticket()
    first.acquire(60)
    order = []
    threads = [
      threading.Thread(target=lambda: (third.acquire(10), order.append("third"))),
      threading.Thread(target=lambda: (second.acquire(80), order.append("second"))),
    ]
    for thread in threads:
      thread.start()
    self._wait_until(budget.stalled)  # second waits for bytes; third for its turn
    self.assertEqual(order, [])
    first.release()
    for thread in threads:
      thread.join(timeout=60)
    self.assertEqual(order, ["second", "third"])
    self.assertEqual(budget.used, 90)
    second.charge(5)  # what its result still holds
    third.release()
    third.release()  # idempotent
    self.assertEqual(budget.used, 5)

  def test_more_than_the_whole_budget_is_refused_at_once_and_passes_its_turn(self):
    budget = budget_lib.ByteBudget(100)
    big, small = budget.ticket(), budget.ticket()
    with self.assertRaisesRegex(budget_lib.TooLarge, "101 bytes, more than the whole .* 100 bytes"):
      big.acquire(101)
    small.acquire(100)
    self.assertEqual(budget.used, 100)
    with self.assertRaisesRegex(RuntimeError, "at most once"):
      small.acquire(1)

  def test_close_wakes_the_waiters(self):
    budget = budget_lib.ByteBudget(10)
    holder, waiter = budget.ticket(), budget.ticket()
    holder.acquire(10)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_raises(waiter.acquire, 5)))
    thread.start()
    self._wait_until(budget.stalled)
    budget.close()
    thread.join(timeout=60)
    self.assertFalse(thread.is_alive())
    self.assertIsInstance(errors[0], budget_lib.Closed)
    holder.release()
    self.assertEqual(budget.used, 0)
    with self.assertRaisesRegex(ValueError, "must be positive"):
      budget_lib.ByteBudget(0)


def _raises(function, *args):
  try:
    function(*args)
  except Exception as e:  # pylint: disable=broad-except
    return e
  return None


class RecordingBudget(budget_lib.ByteBudget):
  """A ByteBudget that remembers the most bytes it ever held; the last one made is `latest`."""

  latest = None

  def __init__(self, capacity):
    super().__init__(capacity)
    self.peak = 0
    self.tickets = []
    RecordingBudget.latest = self

  def ticket(self):
    ticket = super().ticket()
    self.tickets.append(ticket)
    return ticket

  def _acquire(self, ticket, nbytes):
    super()._acquire(ticket, nbytes)
    with self._cond:
      self.peak = max(self.peak, self._used)


class TinyExtractor:
  """The run_extraction protocol without TensorFlow: a 2-d descriptor of the image's mean."""

  suffix = descriptor_files.DEFAULT_SUFFIX

  def preprocess(self, image, box=None):
    return np.ascontiguousarray(image if box is None else image_loading.crop_box(image, box))

  def load_and_preprocess(self, path, box=None):
    return image_loading.load_and_preprocess(path, box, self.preprocess)

  def extract(self, image):
    return np.array([1.0, float(np.mean(image)) / 255.0], np.float32)

  def extract_batch(self, batch):
    return [self.extract(image) for image in batch]


class ExtractionBudgetTest(parameterized.TestCase, tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.images_dir = self.create_tempdir("images").full_path
    self.out = os.path.join(self.create_tempdir().full_path, "out")
    rng = np.random.default_rng(0)
    self.paths = []
    for i in range(8):
      path = os.path.join(self.images_dir, f"im{i}.png")
      Image.fromarray(rng.integers(0, 256, [30, 40, 3], dtype=np.uint8)).save(path)
      self.paths.append(path)
    with open(os.path.join(self.images_dir, "text.png"), "w") as f:
      f.write("not an image")
    _mkfifo(os.path.join(self.images_dir, "pipe.png"))
    with Image.open(self.paths[0]) as header:
      self.estimate = image_loading.estimate_load_bytes(header, os.path.getsize(self.paths[0]))
    self.enter_context(mock.patch.object(pipeline.budget_lib, "ByteBudget", RecordingBudget))

  def _run(self, **kwargs):
    tasks = task_sources.tasks_from_paths(task_sources.list_images(self.images_dir))
    finished, summary = _in_thread(
      lambda: pipeline.run_extraction(TinyExtractor(), tasks, self.out, log_interval=1e9, **kwargs)
    )
    self.assertTrue(finished, "the extraction deadlocked")
    if isinstance(summary, BaseException):
      raise summary
    return summary

  @parameterized.parameters((1, 1), (4, 3), (2, 8))
  def test_bytes_in_flight_stay_in_the_budget_and_are_all_released(self, num_threads, batch_size):
    # One image's decoding fits, not two; images waiting for a batch hold their
    # preprocessed bytes, so a loader waits for them: the batcher is flushed.
    budget = self.estimate + 1000
    summary = self._run(
      num_threads=num_threads, prefetch=8, batch_size=batch_size, max_bytes_in_flight=budget
    )
    self.assertEqual((summary.done, summary.failed), (8, 2))
    reasons = {image_id: reason for image_id, _, reason in summary.failures}
    self.assertIn("text.png: not a recognised image format", reasons["text"])
    self.assertIn("pipe.png: cannot read (a named pipe, not a regular file", reasons["pipe"])
    recorded = RecordingBudget.latest
    self.assertEqual(recorded.capacity, budget)
    self.assertBetween(recorded.peak, self.estimate, budget)
    self.assertEqual(recorded.used, 0)  # Nothing leaked, failures included.
    self.assertLen(recorded.tickets, 10)
    self.assertTrue(all(t.passed and t.held == 0 for t in recorded.tickets))
    ids, _ = descriptor_reading.read_descriptors(self.out)
    self.assertEqual(ids, [f"im{i}" for i in range(8)])

  def test_an_image_larger_than_the_whole_budget_is_a_failure(self):
    summary = self._run(num_threads=2, max_bytes_in_flight=self.estimate - 1)
    self.assertEqual((summary.done, summary.failed), (0, 10))
    reasons = {image_id: reason for image_id, _, reason in summary.failures}
    self.assertEqual(
      reasons["im3"],
      f"ImageError: {self.paths[3]}: image needs about {self.estimate} bytes, more than the whole "
      f"memory budget of {self.estimate - 1} bytes (max_bytes_in_flight)",
    )
    self.assertEqual(RecordingBudget.latest.used, 0)
    outputs = [n for n in os.listdir(self.out) if not n.startswith(".")]
    self.assertEqual(outputs, [failure_log.FAILURES_FILE])  # no descriptor, no temporary file
    self.assertEqual(RecordingBudget.latest.capacity, self.estimate - 1)

  def test_the_default_budget(self):
    summary = self._run()
    self.assertEqual(summary.done, 8)
    self.assertEqual(RecordingBudget.latest.capacity, image_loading.MAX_BYTES_IN_FLIGHT)
    with self.assertRaisesRegex(ValueError, "max_bytes_in_flight must be positive, got 0"):
      pipeline.run_extraction(TinyExtractor(), [], self.out, max_bytes_in_flight=0)


class CommandTest(tf.test.TestCase):
  """The extraction command on special files: failures rows, the run finishes."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.work = os.path.join(tf.compat.v1.test.get_temp_dir(), "hostile_resources_command")
    os.makedirs(cls.work)
    cls.config = os.path.join(cls.work, "config.pbtxt")
    with open(cls.config, "w") as f:
      f.write(f'model_path: "{testutil.tiny_export("dolg", export_config=ONE_SCALE)}"\n')
      f.write("image_scales: 1.0\nmax_image_size: 40\n")

  def _extract(self, *flags):
    result = testutil.run_module(
      COMMAND, f"--config={self.config}", *flags, cwd=REPO_ROOT, env=_env(), timeout=240
    )
    self.assertNotIn("Traceback", result.stderr)
    return result

  def _rows(self, out):
    rows = failure_log.read_failures(os.path.join(out, failure_log.FAILURES_FILE))
    return {row["image_id"]: row["reason"] for row in rows}

  def _assert_only(self, out, expected_ids):
    files = sorted(n for n in os.listdir(out) if not n.startswith("."))
    outputs = sorted(n for n in files if n != failure_log.FAILURES_FILE)
    self.assertEqual(outputs, [i + descriptor_files.DEFAULT_SUFFIX for i in expected_ids])
    self.assertEqual([n for n in os.listdir(out) if n.endswith(".tmp")], [])

  def test_special_files_in_a_folder_are_failures_and_the_run_finishes(self):
    folder = os.path.join(self.work, "folder")
    os.makedirs(folder)
    Image.new("RGB", (40, 30), (90, 20, 200)).save(os.path.join(folder, "ok.jpg"))
    _symlink_to_dev_zero(os.path.join(folder, "zero.jpg"))
    _mkfifo(os.path.join(folder, "pipe.jpg"))
    _socket_file(os.path.join(folder, "sock.png"))
    out = os.path.join(self.work, "folder_out")
    result = self._extract(f"--images_dir={folder}", f"--output_dir={out}", "--num_threads=4")
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("done 1, skipped 0, failed 3", result.stdout)
    rows = self._rows(out)
    self.assertCountEqual(rows, ["zero", "pipe", "sock"])
    for image_id, kind in [("zero", "a character device"), ("pipe", "a named pipe")]:
      self.assertIn(f"{image_id}.jpg: cannot read ({kind}, not a regular file", rows[image_id])
    self.assertIn("sock.png: cannot read (a socket, not a regular file", rows["sock"])
    self._assert_only(out, ["ok"])

  def test_special_files_in_a_list_are_failures_and_the_run_exits_1(self):
    directory = _directory(os.path.join(self.work, "dir.jpg"))
    fifo = _mkfifo(os.path.join(self.work, "fifo.png"))
    image_list = os.path.join(self.work, "list.txt")
    with open(image_list, "w") as f:
      f.write(f"/dev/zero\n{directory}\n{fifo}\n")
    out = os.path.join(self.work, "list_out")
    result = self._extract(f"--list_images_path={image_list}", f"--output_dir={out}")
    self.assertEqual(result.returncode, 1, result.stderr[-3000:])  # work, and nothing extracted
    self.assertIn("done 0, skipped 0, failed 3", result.stdout)
    rows = self._rows(out)
    self.assertIn("/dev/zero: cannot read (a character device, not a regular file", rows["zero"])
    self.assertIn(f"{directory}: cannot read (a directory, not a regular file", rows["dir"])
    self.assertIn(f"{fifo}: cannot read (a named pipe, not a regular file", rows["fifo"])
    self._assert_only(out, [])


class PeakMemoryTest(tf.test.TestCase):
  """Peak RSS of the extraction command over worst-case files (issue 25's measurement)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.work = os.path.join(tf.compat.v1.test.get_temp_dir(), "hostile_resources_rss")
    cls.images = os.path.join(cls.work, "images")
    os.makedirs(cls.images)
    side = 9990  # 99.8 Mpixels, just under images.MAX_PIXELS
    grey = Image.new("I;16", (side, side))  # 200 MB decoded, ~190 KB as a PNG
    for i in range(4):
      grey.save(os.path.join(cls.images, f"grey16_{i}.png"))
    del grey
    Image.new("F", (side, side)).save(
      os.path.join(cls.images, "float.tif"), compression="tiff_deflate"
    )
    cls.config = os.path.join(cls.work, "config.pbtxt")
    with open(cls.config, "w") as f:
      f.write(f'model_path: "{testutil.tiny_export("dolg", export_config=ONE_SCALE)}"\n')
      f.write("image_scales: 1.0\nmax_image_size: 64\n")

  def _peak_rss(self, name, *flags):
    out = os.path.join(self.work, name)
    command = [sys.executable, "-m", COMMAND, f"--config={self.config}"]
    command += [f"--images_dir={self.images}", f"--output_dir={out}", *flags]
    result = subprocess.run(
      [sys.executable, "-c", RSS_WRAPPER, *command],
      capture_output=True,
      text=True,
      cwd=REPO_ROOT,
      env=_env(),
      timeout=600,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertNotIn("Traceback", result.stderr)
    self.assertIn("done 5, skipped 0, failed 0", result.stdout)
    peak_kb = int(result.stdout.split("PEAK_RSS_KB")[1].split()[0])
    return peak_kb * 1024

  def test_peak_rss_at_default_settings(self):
    peak = self._peak_rss("out_default")
    self.assertLess(peak, MAX_PEAK_RSS_BYTES, f"peak RSS {peak / 1e9:.2f} GB")

  def test_peak_rss_with_four_threads(self):
    peak = self._peak_rss("out_threads", "--num_threads=4")
    self.assertLess(peak, MAX_PEAK_RSS_BYTES, f"peak RSS {peak / 1e9:.2f} GB")


if __name__ == "__main__":
  tf.test.main()
