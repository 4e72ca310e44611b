"""Extraction's output folder: created and proven writable, locked, its errors.

`prepare_output_dir` creates the folder and proves it writable, `OutputLock`
(fcntl.flock on `.dolg_extract.lock`) keeps a second extraction out,
`OutputError` is a one-line error about the folder, and `folder_errno` tells a
folder-wide write error (disk full, read-only, permission denied) from a
failure of one image. The descriptor files themselves: io/descriptor_files.py.
"""

import errno
import os

from dolg_tf.io.descriptor_files import os_error_text
from dolg_tf.utils import dir_lock
from dolg_tf.utils import files as file_utils

LOCK_FILE = ".dolg_extract.lock"

# Write errors about the whole output folder, not one image: no later write can
# succeed, so a batch job stops instead of recording every image as a failure.
FOLDER_ERRNOS = {
  errno.ENOSPC: "disk full",
  errno.EDQUOT: "disk quota exceeded",
  errno.EROFS: "read-only file system",
  errno.EACCES: "permission denied",
  errno.EPERM: "permission denied",
}


class OutputError(OSError):
  """The output folder cannot be used: not a folder, not writable, full or in use.

  The message is one line naming the folder or file.
  """


def folder_errno(error: BaseException | None) -> int | None:
  """The FOLDER_ERRNOS errno of `error` or of an error it was raised from, else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in FOLDER_ERRNOS:
      return error.errno
    error = error.__cause__ or error.__context__
  return None


def prepare_output_dir(output_dir: str) -> bool:
  """Creates `output_dir` if needed and checks that files can be created in it.

  A real probe (a hidden temporary file, created and removed), not
  `os.access`, so read-only mounts, ACLs and root are all judged right.

  Returns:
    Whether the folder was created.

  Raises:
    OutputError: naming the folder, if it is a file, cannot be created or is
      not writable.
  """
  if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
    raise OutputError(f"{output_dir}: output folder is a file, not a folder")
  created = False
  if not os.path.isdir(output_dir):
    try:
      os.makedirs(output_dir)
      created = True
    except FileExistsError:
      pass  # Made meanwhile by someone else; the probe below decides.
    except OSError as e:
      raise OutputError(
        f"{output_dir}: cannot create the output folder ({os_error_text(e)})"
      ) from e
  probe = file_utils.temp_path(os.path.join(output_dir, "write-test"))
  try:
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)
  except OSError as e:
    raise OutputError(f"{output_dir}: output folder is not writable ({os_error_text(e)})") from e
  return created


class OutputLock:
  """One extraction at a time per output folder: an exclusive `fcntl.flock`.

  The lock is taken on `<output_dir>/.dolg_extract.lock`, which holds the
  holder's "pid <pid> on <host>". The OS drops a flock when its process ends,
  however it ends, so a killed run never leaves a stale lock; the file is
  removed on release (a file left by a killed run is harmless: only the flock
  counts). Two opens of the file, even in one process, exclude each other.

    with output_folder.OutputLock("out/"):
      ...
  """

  def __init__(self, output_dir: str):
    self.output_dir = output_dir
    self.path = os.path.join(output_dir, LOCK_FILE)
    self._lock = dir_lock.DirLock(self.path)

  @property
  def held(self) -> bool:
    return self._lock.held

  def acquire(self) -> "OutputLock":
    """Takes the lock without waiting (dolg_tf.utils.dir_lock).

    Raises:
      OutputError: naming the folder and the pid and host of the holder, if
        another extraction holds it; naming the lock file if it cannot be
        created or locked.
    """
    try:
      self._lock.acquire()
    except dir_lock.LockBusyError as e:
      raise OutputError(
        f"{self.output_dir}: output folder in use by another extraction ({e.holder}); "
        "wait for it to finish or use another output folder"
      ) from None
    except dir_lock.LockFileError as e:
      raise OutputError(f"{self.path}: cannot {e.action} ({os_error_text(e)})") from e
    return self

  def release(self) -> None:
    """Removes the lock file and drops the lock (no-op if not held)."""
    self._lock.release()

  def __enter__(self) -> "OutputLock":
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()
