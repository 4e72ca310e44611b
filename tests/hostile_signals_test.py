"""Issue 25, interruptions, Beam and the serving client (docs/SECURITY_AND_LIMITS.md).

* Ctrl-C (SIGINT) and SIGTERM: every command unwinds (temporary files
  removed, the output lock released), prints one line `<command>: interrupted`
  / `<command>: terminated` and exits 130 / 143, without a traceback; a rerun
  finishes the job. Checked on the extraction command, the Beam launcher (its
  workers end with it), training and two commands stopped early.
* Beam: a full output folder is one line naming it (exit 2); workers print no
  FutureWarning; killing the launcher with SIGKILL ends its workers.
* The serving client refuses a reply of the wrong shape, with fewer rows than
  images sent or with NaN values: one line naming the server, exit 2, no
  --output_npy file.
"""

import errno
import functools
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.data import beam_dataset, dataset_config
from dolg_tf.extraction import beam_pipeline, failure_log, output_folder, task_sources
from dolg_tf.io import descriptor_files, descriptor_reading
from dolg_tf.utils import beam_cli
from dolg_tf.utils import files as file_utils
from tests import testutil

SUFFIX = ".dolg_global"
# Enough for the extraction command to still run when it is signalled (400 once
# were all done in 2.2 s on an idle machine, before the test saw the first one).
NUM_IMAGES = 1200
NUM_BEAM_IMAGES = 12
NUM_BEAM_SIGNAL_IMAGES = 160  # enough for the Beam pipeline to still run when it is signalled
TWO_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
SIGNALS = (
  ("sigint", signal.SIGINT, 130, "interrupted"),
  ("sigterm", signal.SIGTERM, 143, "terminated"),
)
# A line of the interruption / error convention (log lines start with I/W/E + date).
CONVENTION_LINE = re.compile(r"^[a-z_]+: (interrupted|terminated|error: .*)$")


def _write_images(folder, count, size=(40, 40), seed=0):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    array = rng.integers(0, 256, [*size, 3], dtype=np.uint8)
    Image.fromarray(array).save(os.path.join(folder, f"img{i:03d}.png"))


def _outputs(folder):
  try:
    return sorted(n for n in os.listdir(folder) if n.endswith(SUFFIX))
  except FileNotFoundError:
    return []


def _temp_files(folder):
  try:
    return [n for n in os.listdir(folder) if file_utils.TEMP_NAME_PATTERN.match(n)]
  except FileNotFoundError:
    return []


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
  except (FileNotFoundError, IndexError):
    return False


def _descendants(pid):
  found, pending = [], [pid]
  while pending:
    parent = pending.pop()
    try:
      tasks = os.listdir(f"/proc/{parent}/task")
    except OSError:
      continue
    for task in tasks:
      try:
        with open(f"/proc/{parent}/task/{task}/children") as f:
          children = [int(c) for c in f.read().split()]
      except OSError:
        continue
      found += children
      pending += children
  return found


def _mount_tmpfs(test, size):
  """A fresh tmpfs of `size` (e.g. "32k"), unmounted at cleanup; None if mounting is not allowed."""
  folder = test.create_tempdir().full_path
  result = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder],
    capture_output=True,
    check=False,
  )
  if result.returncode:
    return None
  test.addCleanup(subprocess.run, ["umount", "-l", folder], check=False)
  return folder


def _default_sigint():
  signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Process:
  """`python -m <module> <args>` in its own session, stderr and stdout to files."""

  def __init__(self, test, module, *args, cwd=None):
    folder = test.create_tempdir().full_path
    self.stdout_path = os.path.join(folder, "stdout")
    self.stderr_path = os.path.join(folder, "stderr")
    with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
      self.popen = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=out,
        stderr=err,
        cwd=cwd,
        start_new_session=True,
        # Python turns SIGINT into KeyboardInterrupt unless it starts ignoring it
        # (as background jobs of a shell do).
        preexec_fn=_default_sigint,
      )
    test.addCleanup(self.kill)

  @property
  def pid(self):
    return self.popen.pid

  def kill(self):
    if self.popen.poll() is None:
      os.killpg(self.popen.pid, signal.SIGKILL)
      self.popen.wait()

  def stderr(self):
    with open(self.stderr_path) as f:
      return f.read()

  def stdout(self):
    with open(self.stdout_path) as f:
      return f.read()

  def wait_until(self, test, condition, what, timeout=240):
    """Polls `condition` until true; fails if the process ends first or it takes too long."""
    deadline = time.monotonic() + timeout
    while not condition():
      if self.popen.poll() is not None:
        test.fail(f"ended ({self.popen.returncode}) before {what}:\n{self.stderr()[-3000:]}")
      if time.monotonic() > deadline:
        test.fail(f"no {what} within {timeout}s:\n{self.stderr()[-3000:]}")
      time.sleep(0.02)

  def signal_and_wait(self, signum, timeout=120):
    self.popen.send_signal(signum)
    return self.popen.wait(timeout=timeout)


class SignalTestCase(tf.test.TestCase, parameterized.TestCase):
  def assert_one_line(self, stderr, line):
    """`line` is stderr's only line of the error convention, and there is no traceback."""
    self.assertNotIn("Traceback", stderr)
    lines = [x for x in stderr.splitlines() if CONVENTION_LINE.match(x)]
    self.assertEqual(lines, [line], stderr[-3000:])


class CliInterruptionTest(SignalTestCase):
  """cli.run itself: finally blocks run, one line, 130 / 143, threads do not hold the exit."""

  PROGRAM = """
import os, signal, sys, threading, time
from dolg_tf.utils import cli

def main(argv):
  marker = argv[1]
  # A non-daemon thread that never ends must not keep the process alive.
  threading.Thread(target=time.sleep, args=(10000,)).start()
  try:
    open(marker, "w").close()
    os.kill(os.getpid(), int(argv[2]))
    time.sleep(60)
  finally:
    os.unlink(marker)

cli.run(main)
"""

  @parameterized.named_parameters(*((n, s, c, w) for n, s, c, w in SIGNALS))
  def test_unwinds_and_exits_with_the_signal_status(self, signum, status, word):
    folder = self.create_tempdir().full_path
    script = os.path.join(folder, "program.py")
    with open(script, "w") as f:
      f.write(self.PROGRAM)
    marker = os.path.join(folder, "marker")
    result = subprocess.run(
      [sys.executable, script, marker, str(int(signum))],
      capture_output=True,
      text=True,
      timeout=120,
      preexec_fn=_default_sigint,
    )
    self.assertEqual(result.returncode, status, result.stderr)
    self.assert_one_line(result.stderr, f"program: {word}")
    self.assertFalse(os.path.exists(marker), "the finally block did not run")

  OWN_HANDLER = """
import os, signal, sys, time
from dolg_tf.utils import cli

def main(argv):
  received = []
  previous = signal.signal(signal.SIGTERM, lambda *_: received.append(1))  # as training does
  os.kill(os.getpid(), signal.SIGTERM)
  while not received:
    time.sleep(0.01)
  signal.signal(signal.SIGTERM, previous)
  print("handled by the command", flush=True)
  os.kill(os.getpid(), signal.SIGTERM)  # cli.run's handler again
  time.sleep(60)

cli.run(main)
"""

  def test_a_command_with_its_own_sigterm_handler_keeps_it(self):
    script = os.path.join(self.create_tempdir().full_path, "own.py")
    with open(script, "w") as f:
      f.write(self.OWN_HANDLER)
    result = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    self.assertEqual(result.stdout, "handled by the command\n")
    self.assertEqual(result.returncode, 143, result.stderr)
    self.assert_one_line(result.stderr, "own: terminated")


class ExtractionInterruptionTest(SignalTestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tf.compat.v1.test.get_temp_dir()
    cls.images = os.path.join(root, "signal_images")
    _write_images(cls.images, NUM_IMAGES)
    cls.config = os.path.join(root, "signal_dolg.pbtxt")
    export = testutil.tiny_export("dolg", export_config=testutil.SMALL_EXPORT_CONFIG)
    with open(cls.config, "w") as f:
      f.write(f'model_path: "{export}"\nmax_image_size: 80\n')

  @parameterized.named_parameters(*((n, s, c, w) for n, s, c, w in SIGNALS))
  def test_signal_mid_run_then_rerun_finishes(self, signum, status, word):
    out = os.path.join(self.create_tempdir().full_path, "out")
    args = (
      f"--config={self.config}",
      f"--images_dir={self.images}",
      f"--output_dir={out}",
      "--num_threads=2",
    )
    process = _Process(self, "dolg_tf.extraction.extract_features", *args)
    process.wait_until(self, lambda: _outputs(out), "a first descriptor")
    self.assertEqual(process.signal_and_wait(signum), status, process.stderr()[-3000:])
    self.assert_one_line(process.stderr(), f"extract_features: {word}")
    written = _outputs(out)
    self.assertNotEmpty(written)
    self.assertLess(len(written), NUM_IMAGES)
    self.assertEqual(_temp_files(out), [])
    self.assertFalse(os.path.exists(os.path.join(out, output_folder.LOCK_FILE)))
    ids = [name[: -len(SUFFIX)] for name in written]
    _, matrix = descriptor_reading.read_descriptors(out, ids, suffix=SUFFIX)  # nothing partial
    self.assertTrue(np.isfinite(matrix).all())

    again = testutil.run_module("dolg_tf.extraction.extract_features", *args)
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn(
      f"done {NUM_IMAGES - len(written)}, skipped {len(written)}, failed 0", again.stdout
    )
    self.assertLen(_outputs(out), NUM_IMAGES)

  def test_sigint_while_the_model_loads(self):
    # The command locks the output folder, then imports TensorFlow and loads the model.
    out = os.path.join(self.create_tempdir().full_path, "out")
    lock = os.path.join(out, output_folder.LOCK_FILE)
    process = _Process(
      self,
      "dolg_tf.extraction.extract_features",
      f"--config={self.config}",
      f"--images_dir={self.images}",
      f"--output_dir={out}",
    )
    process.wait_until(self, lambda: os.path.exists(lock), "the output lock")
    self.assertEqual(process.signal_and_wait(signal.SIGINT), 130, process.stderr()[-3000:])
    self.assert_one_line(process.stderr(), "extract_features: interrupted")
    self.assertFalse(os.path.exists(lock))
    self.assertEqual(_temp_files(out), [])
    if not _outputs(out):  # stopped before extracting: the folder it created is gone
      self.assertFalse(os.path.exists(out))

  def test_sigint_while_importing(self):
    # Within the first half second the command is still importing (TensorFlow
    # takes seconds): dolg_tf's excepthook prints the one line; Python then
    # ends as killed by SIGINT (-2, i.e. 130 in a shell). Later, cli.run
    # exits 130 itself: either way one line, no traceback.
    process = _Process(self, "dolg_tf.train", "--logdir=" + self.create_tempdir().full_path)
    time.sleep(0.5)
    self.assertIn(process.signal_and_wait(signal.SIGINT), (-signal.SIGINT, 130))
    self.assert_one_line(process.stderr(), "train: interrupted")

  def test_sigint_while_waiting_for_a_server(self):
    with socket.socket() as listener:  # accepts the connection, never answers
      listener.bind(("127.0.0.1", 0))
      listener.listen(1)
      folder = self.create_tempdir().full_path
      Image.new("RGB", (8, 6)).save(os.path.join(folder, "image.png"))
      npy = os.path.join(folder, "out.npy")
      process = _Process(
        self,
        "dolg_tf.export.serving_client",
        f"--server=127.0.0.1:{listener.getsockname()[1]}",
        f"--output_npy={npy}",
        "image.png",
        cwd=folder,
      )
      listener.settimeout(240)
      connection, _ = listener.accept()
      with connection:
        self.assertEqual(process.signal_and_wait(signal.SIGINT), 130, process.stderr())
    self.assert_one_line(process.stderr(), "serving_client: interrupted")
    self.assertFalse(os.path.exists(npy))


class TrainingInterruptionTest(SignalTestCase):
  def test_sigint_stops_training_with_a_usable_checkpoint(self):
    data_dir = self.create_tempdir().full_path
    train_pattern, _, num_classes = testutil.training_data(data_dir)
    logdir = os.path.join(self.create_tempdir().full_path, "run")
    config_dir = self.create_tempdir().full_path
    process = _Process(
      self,
      "dolg_tf.train",
      f"--train_file_pattern={train_pattern}",
      "--dataset_version=synthetic",
      f"--num_classes={num_classes}",
      f"--logdir={logdir}",
      "--experiment=dolg_gldv2",
      "--config_file=" + config_lib.save_model_config(testutil.TINY_TRAIN_DOLG, config_dir),
      "--batch_size=4",
      "--image_size=32",
      "--max_steps=100000",
      "--log_every=1",
      "--checkpoint_every=2",
      "--export_at_end=false",
    )
    process.wait_until(
      self, lambda: re.search(r"\bstep [3-9]\d*/100000", process.stderr()), "step 3"
    )
    self.assertEqual(process.signal_and_wait(signal.SIGINT), 130, process.stderr()[-3000:])
    self.assert_one_line(process.stderr(), "train: interrupted")
    checkpoints = os.path.join(logdir, "checkpoints")
    latest = tf.train.latest_checkpoint(checkpoints)
    self.assertIsNotNone(latest)
    self.assertNotEmpty(tf.train.load_checkpoint(latest).get_variable_to_shape_map())
    self.assertFalse(os.path.exists(os.path.join(logdir, "export")))


class DemoInterruptionTest(SignalTestCase):
  def test_sigterm_to_the_demo_stops_its_training_with_a_checkpoint(self):
    workdir = os.path.join(self.create_tempdir().full_path, "demo")
    process = _Process(
      self,
      "dolg_tf.demo",
      f"--workdir={workdir}",
      "--max_steps=100000",
      "--synthetic_classes=4",
    )
    checkpoints = os.path.join(workdir, "checkpoints")

    def training():
      return [p for p in _descendants(process.pid) if "dolg_tf.train" in _cmdline(p)]

    # Logged by Trainer.train as it installs its SIGTERM handler.
    process.wait_until(
      self, lambda: training() and "Training dolg" in process.stderr(), "the training loop"
    )
    children = training()
    self.assertEqual(process.signal_and_wait(signal.SIGTERM), 143, process.stderr()[-3000:])
    self.assert_one_line(process.stderr(), "demo: terminated")
    self.assertEqual([p for p in children if _alive(p)], [])
    # The training process got SIGTERM from the demo: it saved the step it was at.
    self.assertIn("Stopped by SIGTERM; checkpoint: ", process.stdout())
    self.assertIsNotNone(tf.train.latest_checkpoint(checkpoints))


class BeamTest(SignalTestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tf.compat.v1.test.get_temp_dir()
    cls.images = os.path.join(root, "beam_signal_images")
    _write_images(cls.images, NUM_BEAM_IMAGES, size=(60, 80))
    cls.many_images = os.path.join(root, "beam_signal_many_images")
    _write_images(cls.many_images, NUM_BEAM_SIGNAL_IMAGES)
    cls.config = os.path.join(root, "beam_signal_dolg.pbtxt")
    export = testutil.tiny_export("dolg", export_config=testutil.SMALL_EXPORT_CONFIG)
    with open(cls.config, "w") as f:
      f.write(f'model_path: "{export}"\nmax_image_size: 80\n')

  def _launcher(self, out):
    """The launcher with two workers, once it wrote a first descriptor."""
    process = _Process(
      self,
      "dolg_tf.extraction.beam_extract",
      f"--config={self.config}",
      f"--images_dir={self.many_images}",
      f"--output_dir={out}",
      *TWO_WORKERS,
    )

    def workers():
      return [
        p for p in _descendants(process.pid) if "sdk_worker_main" in _cmdline(p) and _alive(p)
      ]

    process.wait_until(self, lambda: len(workers()) >= 2, "two workers")
    pids = workers()
    process.wait_until(self, lambda: _outputs(out), "a first descriptor")
    return process, pids

  def _assert_gone(self, pids):
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
      time.sleep(0.1)
    self.assertEqual([p for p in pids if _alive(p)], [])

  @parameterized.named_parameters(*((n, s, c, w) for n, s, c, w in SIGNALS))
  def test_signal_to_the_launcher_ends_its_workers(self, signum, status, word):
    out = self.create_tempdir().full_path
    process, workers = self._launcher(out)
    self.assertEqual(process.signal_and_wait(signum), status, process.stderr()[-3000:])
    self.assert_one_line(process.stderr(), f"beam_extract: {word}")
    self._assert_gone(workers)
    self.assertEqual(_temp_files(out), [])
    self.assertFalse(os.path.exists(os.path.join(out, output_folder.LOCK_FILE)))
    self.assertLess(len(_outputs(out)), NUM_BEAM_SIGNAL_IMAGES)
    self.assertNotIn("FutureWarning", process.stderr())

  def test_sigkill_of_the_launcher_ends_its_workers(self):
    out = self.create_tempdir().full_path
    process, workers = self._launcher(out)
    process.popen.send_signal(signal.SIGKILL)
    process.popen.wait()
    self._assert_gone(workers)
    self.assertNotIn("Traceback", process.stderr())

  def test_workers_get_the_launchers_warning_filters_and_start_up_module(self):
    # The signal tests above check the result: no FutureWarning from any worker.
    options = beam_cli.pipeline_options(["beam_extract", "--beam_plugins=x.y"])
    self.assertEqual(options.get_all_options()["beam_plugins"], ["x.y", beam_cli.__name__])
    self.assertEqual(os.environ[beam_cli.LAUNCHER_ENV], str(os.getpid()))
    filters = os.environ["PYTHONWARNINGS"].split(",")
    for module in ("google.auth.transport.grpc", "google.api_core._python_version_support"):
      self.assertIn(f"ignore::FutureWarning:{module}", filters)

  def test_full_output_folder_is_one_line_naming_it(self):
    disk = _mount_tmpfs(self, "32k")  # 8 pages: the lock file and a few descriptors
    if disk is None:
      self.skipTest("mount not permitted here: test_full_disk_by_fault_injection checks it")
    out = os.path.join(disk, "out")
    result = testutil.run_module(
      "dolg_tf.extraction.beam_extract",
      f"--config={self.config}",
      f"--images_dir={self.images}",
      f"--output_dir={out}",
      *TWO_WORKERS,
    )
    self.assertEqual(result.returncode, 2, result.stderr[-3000:])
    (line,) = [x for x in result.stderr.splitlines() if CONVENTION_LINE.match(x)]
    self.assertRegex(
      line,
      f"^beam_extract: error: {re.escape(out)}: extraction stopped \\(disk full\\): "
      r"this run wrote \d+, failed 0, left [1-9]\d* not written \(the next run extracts them\)",
    )
    self.assert_one_line(result.stderr, line)
    self.assertEqual(_temp_files(out), [])
    written = _outputs(out)
    self.assertLess(len(written), NUM_BEAM_IMAGES)
    if written:
      ids = [n[: -len(SUFFIX)] for n in written]
      descriptor_reading.read_descriptors(out, ids, suffix=SUFFIX)  # nothing partial

  def test_full_disk_by_fault_injection(self):
    # The same refusal without a mount: in-process, Beam's in-memory runner.
    out = self.create_tempdir().full_path
    real_write = descriptor_files.PerImageWriter.write
    calls = []

    def write(writer, image_id, result):
      calls.append(image_id)
      if len(calls) > 3:
        raise OSError(errno.ENOSPC, "No space left on device", image_id)
      return real_write(writer, image_id, result)

    tasks = task_sources.tasks_from_paths(task_sources.list_images(self.images))
    with tf.compat.v1.test.mock.patch.object(descriptor_files.PerImageWriter, "write", write):
      with self.assertRaisesRegex(
        output_folder.OutputError,
        f"^{re.escape(out)}: extraction stopped \\(disk full\\): this run wrote 3, failed 0, "
        f"left {NUM_BEAM_IMAGES - 3} not written",
      ):
        beam_pipeline.run_pipeline(
          self.config, tasks, out, beam_cli.pipeline_options(["beam_extract"])
        )
    self.assertLen(_outputs(out), 3)
    self.assertFalse(os.path.exists(os.path.join(out, failure_log.FAILURES_FILE)))


class BeamDatasetFullDiskTest(tf.test.TestCase):
  def test_full_output_folder_stops_with_the_shards_left(self):
    root = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    with open(os.path.join(root, "train.csv"), "w") as f:
      f.write("id,url,landmark_id\n")
      for i in range(8):
        image_id = f"{i:03x}" + "a" * 13
        folder = os.path.join(root, "train", *image_id[:3])
        os.makedirs(folder, exist_ok=True)
        array = rng.integers(0, 256, [64, 64, 3], dtype=np.uint8)
        Image.fromarray(array).save(os.path.join(folder, image_id + ".jpg"), quality=95)
        f.write(f"{image_id},,{1000 + i % 2}\n")
    disk = _mount_tmpfs(self, "24k")  # the plan files fit, the shards do not
    out = os.path.join(disk or root, "tfrecords")
    config = dataset_config.DatasetBuildConfig(
      output_directory=out,
      train_directory=os.path.join(root, "train"),
      train_csv_path=os.path.join(root, "train.csv"),
      num_shards=2,
      num_validation_shards=1,
    )
    run = functools.partial(
      beam_dataset.run_pipeline,
      config,
      options=beam_cli.pipeline_options(["beam_build_dataset"]),
    )
    if disk is None:  # no mount allowed: the TFRecord writer fails as on a full disk
      full = tf.errors.ResourceExhaustedError(None, None, "No space left on device")
      with tf.compat.v1.test.mock.patch.object(tf.io, "TFRecordWriter", side_effect=full):
        self._assert_stopped(run, out)
    else:
      self._assert_stopped(run, out)
    self.assertEqual(_temp_files(out), [])
    self.assertFalse(os.path.exists(os.path.join(out, "failures.csv")))

  def _assert_stopped(self, run, out):
    with self.assertRaisesRegex(
      OSError,
      f"^{re.escape(out)}: dataset stopped \\(No space left on device\\): this run wrote "
      r"\d+ shards, left [1-3] not written \(the next run writes them\)$",
    ):
      run()


def _cmdline(pid):
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
  except OSError:
    return ""


class ServingClientReplyTest(SignalTestCase):
  """A fake TF Serving REST server with a chosen reply."""

  def setUp(self):
    super().setUp()
    self.reply = None
    test = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(test.reply).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        del args

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    self.addCleanup(httpd.server_close)
    self.addCleanup(httpd.shutdown)
    self.server = f"127.0.0.1:{httpd.server_address[1]}"
    self.url = f"http://{self.server}/v1/models/dolg:predict"
    self.dir = self.create_tempdir().full_path
    for name in ("a.png", "b.png"):
      Image.new("RGB", (8, 6), (10, 20, 30)).save(os.path.join(self.dir, name))
    self.npy = os.path.join(self.dir, "out.npy")

  def _run(self, reply):
    self.reply = reply
    return testutil.run_module(
      "dolg_tf.export.serving_client",
      f"--server={self.server}",
      f"--output_npy={self.npy}",
      "a.png",
      "b.png",
      cwd=self.dir,
      timeout=120,
    )

  @parameterized.named_parameters(
    (
      "three_dims",
      {"outputs": {"global_descriptor": [[[0.6, 0.8]], [[1.0, 0.0]]]}},
      r"reply has shape \[2, 1, 2\], expected \[2, D\] \(one descriptor per image sent\)",
    ),
    (
      "one_dim",
      {"outputs": [0.6, 0.8]},
      r"reply has shape \[2\], expected \[2, D\]",
    ),
    (
      "fewer_rows",
      {"outputs": {"global_descriptor": [[0.6, 0.8]]}},
      r"reply has 1 descriptors for 2 images sent \(shape \[1, 2\]\)",
    ),
    (
      "more_rows",
      {"outputs": [[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]},
      r"reply has 3 descriptors for 2 images sent",
    ),
    (
      "nan",
      {"outputs": [[0.6, 0.8], [float("nan"), 0.0]]},
      r"non-finite \(NaN/Inf\) descriptor for image 2 of 2$",
    ),
    (
      "ragged",
      {"outputs": [[0.6, 0.8], [1.0]]},
      r"not a predict response with outputs",
    ),
  )
  def test_bad_reply_is_one_line_naming_the_server(self, reply, message):
    result = self._run(reply)
    self.assertEqual(result.returncode, 2, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    self.assertRegex(line, f"^serving_client: error: {re.escape(self.url)}: {message}")
    self.assert_one_line(result.stderr, line)
    self.assertEqual(result.stdout, "")
    self.assertFalse(os.path.exists(self.npy))
    self.assertEqual(_temp_files(self.dir), [])

  def test_good_reply_is_printed_and_saved(self):
    result = self._run({"outputs": [[0.6, 0.8], [1.0, 0.0]]})
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertLen(result.stdout.splitlines(), 2)
    self.assertAllClose(np.load(self.npy), [[0.6, 0.8], [1.0, 0.0]])

  def test_grpc_reply_is_checked_too(self):
    from dolg_tf.export import serving_client  # noqa: PLC0415

    with self.assertRaisesRegex(serving_client.ServerError, r"^srv: non-finite"):
      serving_client.check_descriptors("srv", np.array([[np.inf, 0.0]]), 1)
    checked = serving_client.check_descriptors("srv", np.array([[0.6, 0.8]]), 1)
    self.assertEqual(checked.dtype, np.float32)
    self.assertAllClose(checked, [[0.6, 0.8]])


if __name__ == "__main__":
  tf.test.main()
