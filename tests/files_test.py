"""Tests for dolg_tf.utils.files (atomic writes)."""

import os
import stat
from unittest import mock

import numpy as np
import tensorflow as tf

from dolg_tf.utils import files as file_utils


class TempPathTest(tf.test.TestCase):
  def test_hidden_name_next_to_the_file_matching_the_pattern(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "a.bin")
    tmp = file_utils.temp_path(path)
    self.assertEqual(os.path.dirname(tmp), folder)
    match = file_utils.TEMP_NAME_PATTERN.match(os.path.basename(tmp))
    self.assertIsNotNone(match)
    self.assertEqual(match.group("name"), "a.bin")
    self.assertEqual(int(match.group("pid")), os.getpid())
    self.assertNotEqual(tmp, file_utils.temp_path(path))  # fresh every time
    self.assertIsNone(file_utils.TEMP_NAME_PATTERN.match("a.bin"))

  def test_urls_are_kept(self):
    tmp = file_utils.temp_path("gs://bucket/dir/train-00000-of-00002")
    self.assertStartsWith(tmp, "gs://bucket/dir/.train-00000-of-00002.")
    self.assertEndsWith(tmp, ".tmp")


class AtomicWriteTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def _path(self, name):
    return os.path.join(self.dir, name)

  def test_bytes_and_text(self):
    file_utils.atomic_write_bytes(self._path("a.bin"), b"\x00\x01")
    self.assertEqual(file_utils.read_bytes(self._path("a.bin")), b"\x00\x01")
    file_utils.atomic_write_text(self._path("a.bin"), "é\nx\n")  # replaces
    with open(self._path("a.bin"), "rb") as f:
      self.assertEqual(f.read(), "é\nx\n".encode())
    self.assertEqual(os.listdir(self.dir), ["a.bin"])
    mode = stat.S_IMODE(os.stat(self._path("a.bin")).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    self.assertEqual(mode, 0o666 & ~umask)

  def test_missing_folder_is_named(self):
    path = os.path.join(self.dir, "no", "a.txt")
    with self.assertRaisesRegex(OSError, f"^{path}: cannot write"):
      file_utils.atomic_write_text(path, "x")

  def test_atomic_open_streams_and_cleans_up_on_error(self):
    path = self._path("m.npz")
    with file_utils.atomic_open(path, "wb") as f:
      (only,) = os.listdir(self.dir)  # only the temporary, until the block ends
      self.assertEqual(file_utils.TEMP_NAME_PATTERN.match(only).group("name"), "m.npz")
      np.savez(f, x=np.arange(3))
    with np.load(path) as data:
      self.assertAllEqual(data["x"], [0, 1, 2])
    with self.assertRaisesRegex(RuntimeError, "job died"):
      with file_utils.atomic_open(path, "wb") as f:
        f.write(b"partial")
        raise RuntimeError("job died")
    self.assertEqual(os.listdir(self.dir), ["m.npz"])  # old file kept, temporary removed
    with np.load(path) as data:
      self.assertAllEqual(data["x"], [0, 1, 2])
    with file_utils.atomic_open(self._path("t.txt"), "w") as f:
      f.write("línea\n")
    with open(self._path("t.txt"), encoding="utf-8") as f:
      self.assertEqual(f.read(), "línea\n")
    with self.assertRaisesRegex(ValueError, "mode"):
      with file_utils.atomic_open(self._path("x"), "a"):
        pass

  def test_interrupted_rename_leaves_no_temporary(self):
    file_utils.atomic_write_text(self._path("a.txt"), "old")
    for error in (KeyboardInterrupt(), OSError(28, "No space left on device")):
      with mock.patch("os.replace", side_effect=error):
        with self.assertRaises(type(error)) as raised:
          file_utils.atomic_write_text(self._path("a.txt"), "new")
      if isinstance(error, OSError):
        self.assertRegex(str(raised.exception), "a.txt: cannot write \\(No space left")
      self.assertEqual(os.listdir(self.dir), ["a.txt"])
      with open(self._path("a.txt")) as f:
        self.assertEqual(f.read(), "old")

  def test_read_bytes_errors(self):
    with self.assertRaisesRegex(FileNotFoundError, "nope: no such file"):
      file_utils.read_bytes(self._path("nope"))
    with self.assertRaisesRegex(OSError, f"{self.dir}: cannot read"):
      file_utils.read_bytes(self.dir)


class AtomicWriteDirTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.target = os.path.join(self.dir, "sub", "index")

  def _write(self, names):
    def write(tmp):
      self.assertEqual(os.listdir(tmp), [])
      self.assertFalse(os.path.exists(self.target) and tmp == self.target)
      for name in names:
        with open(os.path.join(tmp, name), "w") as f:
          f.write(name)

    return write

  def test_creates_then_replaces_whole(self):
    file_utils.atomic_write_dir(self.target, self._write(["a", "b"]))  # parent created
    self.assertCountEqual(os.listdir(self.target), ["a", "b"])
    umask = os.umask(0)
    os.umask(umask)
    self.assertEqual(stat.S_IMODE(os.stat(self.target).st_mode), 0o777 & ~umask)
    file_utils.atomic_write_dir(self.target, self._write(["c"]))
    self.assertEqual(os.listdir(self.target), ["c"])  # nothing of the old folder
    self.assertEqual(os.listdir(os.path.dirname(self.target)), ["index"])  # no temporaries

  def test_failed_write_leaves_the_old_folder(self):
    file_utils.atomic_write_dir(self.target, self._write(["a"]))

    def broken(tmp):
      self._write(["half"])(tmp)
      raise RuntimeError("disk on fire")

    with self.assertRaisesRegex(RuntimeError, "disk on fire"):
      file_utils.atomic_write_dir(self.target, broken)
    self.assertEqual(os.listdir(self.target), ["a"])
    self.assertEqual(os.listdir(os.path.dirname(self.target)), ["index"])

  def test_interrupted_swap_keeps_the_old_folder(self):
    file_utils.atomic_write_dir(self.target, self._write(["a"]))
    real_replace = os.replace
    calls = []

    def interrupt_second(src, dst):
      calls.append(dst)
      if len(calls) == 2:  # old folder moved aside, new one not yet in place
        raise KeyboardInterrupt
      real_replace(src, dst)

    with mock.patch("os.replace", side_effect=interrupt_second):
      with self.assertRaises(KeyboardInterrupt):
        file_utils.atomic_write_dir(self.target, self._write(["b"]))
    self.assertEqual(os.listdir(self.target), ["a"])
    self.assertEqual(os.listdir(os.path.dirname(self.target)), ["index"])

  def test_unwritable_parent_is_named(self):
    blocker = os.path.join(self.dir, "file")
    with open(blocker, "w") as f:
      f.write("x")
    target = os.path.join(blocker, "index")
    with self.assertRaisesRegex(OSError, f"^{target}: cannot write"):
      file_utils.atomic_write_dir(target, self._write(["a"]))


if __name__ == "__main__":
  tf.test.main()
