"""Tests for the output folder checks and lock of dolg_tf.extraction.output_folder."""

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
from unittest import mock

import tensorflow as tf

from dolg_tf.extraction import output_folder
from dolg_tf.io import descriptor_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD_LOCK = (
  "import sys, time\n"
  "from dolg_tf.extraction import output_folder\n"
  "output_folder.OutputLock(sys.argv[1]).acquire()\n"
  "print('locked', flush=True)\n"
  "time.sleep(120)\n"
)


def refuse_writes_under(folder: str, code: int):
  """Patches os.open / os.makedirs to fail with `code` under `folder` (root ignores chmod)."""
  real_open, real_makedirs = os.open, os.makedirs

  def fake_open(path, *args, **kwargs):
    if os.fspath(path).startswith(folder):
      raise OSError(code, os.strerror(code), path)
    return real_open(path, *args, **kwargs)

  def fake_makedirs(path, *args, **kwargs):
    if os.fspath(path).startswith(folder):
      raise OSError(code, os.strerror(code), path)
    return real_makedirs(path, *args, **kwargs)

  return mock.patch.multiple(os, open=fake_open, makedirs=fake_makedirs)


class PrepareOutputDirTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def test_creates_and_probes(self):
    out = os.path.join(self.root, "a", "b")
    self.assertTrue(output_folder.prepare_output_dir(out))
    self.assertFalse(output_folder.prepare_output_dir(out))
    self.assertEqual(os.listdir(out), [])  # The probe is gone.

  def test_a_file_is_refused(self):
    path = os.path.join(self.root, "file")
    with open(path, "w") as f:
      f.write("x")
    with self.assertRaisesRegex(
      output_folder.OutputError, f"^{path}: output folder is a file, not a folder$"
    ):
      output_folder.prepare_output_dir(path)
    with self.assertRaisesRegex(
      output_folder.OutputError,
      rf"^{path}/sub: cannot create the output folder \(Not a directory\)$",
    ):
      output_folder.prepare_output_dir(os.path.join(path, "sub"))

  def test_read_only_folders_existing_or_to_be_created(self):
    folder = os.path.join(self.root, "ro")
    os.mkdir(folder)
    os.chmod(folder, 0o555)
    self.addCleanup(os.chmod, folder, 0o755)
    if os.access(folder, os.W_OK):  # root: chmod does not stop it; the errors are injected.
      patch = refuse_writes_under(folder, errno.EACCES)
    else:
      patch = contextlib.nullcontext()  # Real permissions.
    with patch:
      with self.assertRaisesRegex(
        output_folder.OutputError,
        rf"^{folder}: output folder is not writable \(Permission denied\)$",
      ):
        output_folder.prepare_output_dir(folder)
      with self.assertRaisesRegex(
        output_folder.OutputError,
        rf"^{folder}/new: cannot create the output folder \(Permission denied\)$",
      ):
        output_folder.prepare_output_dir(os.path.join(folder, "new"))
    with refuse_writes_under(folder, errno.EROFS):
      with self.assertRaisesRegex(
        output_folder.OutputError, r"not writable \(Read-only file system\)$"
      ):
        output_folder.prepare_output_dir(folder)

  def test_folder_errno_follows_causes(self):
    try:
      try:
        raise OSError(errno.ENOSPC, "No space left on device")
      except OSError as e:
        raise OSError("x: cannot write (No space left on device)") from e
    except OSError as wrapped:
      self.assertEqual(output_folder.folder_errno(wrapped), errno.ENOSPC)
      self.assertEqual(descriptor_files.os_error_text(wrapped), "No space left on device")
    self.assertIsNone(output_folder.folder_errno(OSError(errno.ENAMETOOLONG, "long")))
    self.assertIsNone(output_folder.folder_errno(ValueError("x")))


class OutputLockTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.out = self.create_tempdir().full_path

  def test_a_second_open_is_refused_naming_pid_and_host(self):
    with output_folder.OutputLock(self.out) as lock:
      self.assertTrue(lock.held)
      with self.assertRaisesRegex(
        output_folder.OutputError,
        rf"^{self.out}: output folder in use by another extraction "
        rf"\(pid {os.getpid()} on {socket.gethostname()}\); wait for it to finish or use "
        "another output folder$",
      ):
        output_folder.OutputLock(self.out).acquire()
    self.assertEqual(os.listdir(self.out), [])  # Released: the lock file is gone.
    output_folder.OutputLock(self.out).acquire().release()

  def test_another_process_holds_it_until_killed(self):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    holder = subprocess.Popen(
      [sys.executable, "-c", HOLD_LOCK, self.out], stdout=subprocess.PIPE, text=True, env=env
    )
    self.addCleanup(holder.wait)
    self.addCleanup(holder.kill)
    self.assertEqual(holder.stdout.readline().strip(), "locked")
    with self.assertRaisesRegex(
      output_folder.OutputError,
      rf"in use by another extraction \(pid {holder.pid} on {socket.gethostname()}\)",
    ):
      output_folder.OutputLock(self.out).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # The killed holder left its lock file, but no lock.
    self.assertEqual(os.listdir(self.out), [output_folder.LOCK_FILE])
    lock = output_folder.OutputLock(self.out).acquire()
    with open(lock.path) as f:
      self.assertEqual(f.read(), f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.release()


if __name__ == "__main__":
  tf.test.main()
