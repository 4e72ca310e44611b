"""File helpers shared by every writer of the project: atomic writes and plain reads.

Every output appears whole or not at all: it is written under a hidden
temporary name in its own folder, `.<name>.<pid>.<8 hex>.tmp` (see `temp_path`;
`TEMP_NAME_PATTERN` matches it, so leftovers of a killed process can be found),
then renamed over the final name with `os.replace` (atomic on POSIX when both
are on the same file system). On failure the temporary is removed and the
destination is left as it was.

Durable, too: the temporary file's data is fsync'ed before the rename and the
folder is fsync'ed after it (`fsync_dir`), so after a crash or power cut a
file that exists is whole (never a 0-byte or zero-filled file of a rename
that reached the disk before its data). File systems that cannot fsync a
folder (EINVAL) are tolerated; a failing fsync of the data (EIO, ENOSPC) is a
write error naming the destination.

  atomic_write_bytes(path, data) / atomic_write_text(path, text)
  with atomic_open(path, "wb") as f: np.savez(f, ...)    # streamed, not buffered
  atomic_write_dir(folder, lambda tmp: write_files_into(tmp))
"""

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import IO

# `.<name>.<pid>.<8 hex>.tmp`, the names `temp_path` makes.
TEMP_NAME_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def temp_path(path: str | os.PathLike) -> str:
  """A fresh hidden temporary name next to `path` (`.<name>.<pid>.<8 hex>.tmp`).

  Local paths are made absolute; URLs (e.g. `gs://...` for tf.io.gfile) are
  kept as they are.
  """
  path = os.fspath(path)
  folder, name = os.path.split(path if "://" in path else os.path.abspath(path))
  return os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _unlink_quietly(path: str) -> None:
  try:
    os.unlink(path)
  except OSError:
    pass


def _write_error(path: str, error: OSError) -> OSError:
  return OSError(f"{path}: cannot write ({error.strerror or error})")


# fsync errors of a folder that mean "not supported here", not "not written".
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EISDIR, errno.EACCES}


def fsync_dir(folder: str | os.PathLike) -> None:
  """Makes the entries of `folder` (creations, renames, removals) durable.

  File systems that cannot fsync a folder are tolerated (no error).

  Raises:
    IOError: the folder's fsync failed with a real write error (EIO, ENOSPC).
  """
  try:
    fd = os.open(os.fspath(folder) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
  except OSError:
    return  # e.g. a folder we may write but not open for reading: nothing to sync.
  try:
    os.fsync(fd)
  except OSError as e:
    if e.errno not in _DIR_FSYNC_UNSUPPORTED:
      raise
  finally:
    os.close(fd)


def _fsync_tree(root: str) -> None:
  """fsyncs every file and folder under `root` (a folder built by atomic_write_dir)."""
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      if os.path.islink(path):
        continue
      fd = os.open(path, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_open(
  path: str | os.PathLike, mode: str = "wb", encoding: str = "utf-8", newline: str | None = None
) -> Iterator[IO]:
  """Opens a temporary file that replaces `path` when the `with` block ends normally.

  If the block raises, the temporary file is removed, `path` is left as it
  was and the exception propagates unchanged. The file gets the usual
  permissions (0o666 minus umask).

  Args:
    path: destination file; its folder must exist.
    mode: 'wb' (binary) or 'w' (text).
    encoding: text mode only.
    newline: text mode only, as for `open`.

  Yields:
    The open temporary file.

  Raises:
    ValueError: on another mode.
    IOError: naming `path`, if the temporary file cannot be created, written
      out or renamed.
  """
  if mode not in ("wb", "w"):
    raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
  path = os.fspath(path)
  tmp_path = temp_path(path)
  try:
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  except OSError as e:
    raise _write_error(path, e) from e
  text = {} if mode == "wb" else {"encoding": encoding, "newline": newline}
  try:
    f = os.fdopen(fd, mode, **text)
  except BaseException:
    os.close(fd)
    _unlink_quietly(tmp_path)
    raise
  try:
    yield f
  except BaseException:
    try:
      f.close()
    except OSError:
      pass
    _unlink_quietly(tmp_path)
    raise
  try:
    f.flush()  # A full disk shows here...
    os.fsync(f.fileno())  # ...or here (delayed allocation, NFS).
    f.close()
    os.replace(tmp_path, path)
    fsync_dir(os.path.dirname(tmp_path))
  except BaseException as e:  # Also Ctrl-C: no temporary file is left behind.
    try:
      f.close()
    except OSError:
      pass
    _unlink_quietly(tmp_path)
    if isinstance(e, OSError):
      raise _write_error(path, e) from e
    raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` so that readers never see a partial file.

  See `atomic_open`: temporary file in the same folder, renamed over `path`;
  on failure the temporary is removed and `path` is left as it was.

  Args:
    path: destination file; its folder must exist.
    data: the bytes to write.

  Raises:
    IOError: naming `path`, if the folder does not exist or the file cannot
      be written.
  """
  path = os.fspath(path)
  with atomic_open(path, "wb") as f:
    try:
      f.write(data)
    except OSError as e:
      raise _write_error(path, e) from e


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
  """Writes `text` to `path` atomically (as `atomic_write_bytes`), `\\n` kept as is.

  Raises:
    IOError: naming `path`, if the folder does not exist or the file cannot
      be written.
  """
  atomic_write_bytes(path, text.encode(encoding))


def atomic_write_dir(directory: str | os.PathLike, write: Callable[[str], None]) -> None:
  """Builds a folder with `write(tmp_dir)`, then swaps it in place of `directory`.

  `write` fills an empty hidden sibling folder; if it raises, that folder is
  removed and `directory` is left as it was. An existing `directory` is
  replaced whole: it is renamed aside, the new folder renamed in, then the old
  one deleted (if the second rename fails, the old folder is put back). The
  new folder gets the usual permissions (0o777 minus umask).

  Args:
    directory: the folder to create or replace; its parent is created if needed.
    write: called with the path of the temporary folder.

  Raises:
    IOError: naming `directory`, if a folder cannot be created or renamed;
      whatever `write` raises.
  """
  directory = os.path.abspath(os.fspath(directory))
  parent = os.path.dirname(directory)
  tmp_dir = temp_path(directory)
  try:
    os.makedirs(parent, exist_ok=True)
    os.mkdir(tmp_dir, 0o777)
  except OSError as e:
    raise _write_error(directory, e) from e
  try:
    write(tmp_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  try:
    _fsync_tree(tmp_dir)
  except BaseException as e:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if isinstance(e, OSError):
      raise _write_error(directory, e) from e
    raise
  old_dir = None
  try:
    if os.path.lexists(directory):
      old_dir = temp_path(directory)
      os.replace(directory, old_dir)
    try:
      os.replace(tmp_dir, directory)
    except BaseException:
      if old_dir is not None:
        os.replace(old_dir, directory)
      raise
  except BaseException as e:  # Also Ctrl-C: no temporary folder is left behind.
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if isinstance(e, OSError):
      raise _write_error(directory, e) from e
    raise
  try:
    fsync_dir(parent)
  except OSError as e:
    raise _write_error(directory, e) from e
  if old_dir is None:
    return
  if os.path.isdir(old_dir) and not os.path.islink(old_dir):
    shutil.rmtree(old_dir, ignore_errors=True)
  else:
    _unlink_quietly(old_dir)


def read_bytes(path: str) -> bytes:
  """Returns the content of `path`.

  Raises:
    FileNotFoundError: naming `path`, if it does not exist.
    IOError: naming `path`, if it cannot be read (e.g. it is a directory).
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: no such file") from e
  except OSError as e:
    raise OSError(f"{path}: cannot read ({e.strerror or e})") from e


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_temp_files(folder: str) -> list[str]:
  """Removes temporary files of killed writers (their pid is gone); returns them."""
  return _remove_temp_files(folder, lambda pid: not _pid_alive(pid))


def remove_own_temp_files(folder: str) -> list[str]:
  """Removes this process's temporary files (after its writers stopped); returns them.

  Best effort: a file that cannot be removed (read-only file system) stays,
  for `remove_stale_temp_files` of the next run.
  """
  return _remove_temp_files(folder, lambda pid: pid == os.getpid(), quiet=True)


def _remove_temp_files(folder: str, condemned, quiet: bool = False) -> list[str]:
  removed = []
  try:
    entries = list(os.scandir(folder))
  except OSError:
    if not quiet:
      raise
    return removed
  for entry in entries:
    match = TEMP_NAME_PATTERN.match(entry.name)
    if match and entry.is_file() and condemned(int(match.group("pid"))):
      try:
        os.unlink(entry.path)
        removed.append(entry.path)
      except FileNotFoundError:
        pass
      except OSError:
        if not quiet:
          raise
  return removed
