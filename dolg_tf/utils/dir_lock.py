"""One process at a time per folder: an exclusive, non-blocking `fcntl.flock` on a lock file.

  lock = dir_lock.DirLock(os.path.join(folder, ".dolg_train.lock"))
  try:
    lock.acquire()
  except dir_lock.LockBusyError as e:
    ...  # e.holder: "pid <pid> on <host>" of the process holding it
  except dir_lock.LockFileError as e:
    ...  # an OSError: the lock file cannot be created or locked (e.action says which)

The lock file holds its holder's "pid <pid> on <host>". The OS drops a flock
when its process ends, however it ends (even SIGKILL), so a killed process
never leaves a stale lock; the file is removed on release (a file left by a
killed process is harmless: only the flock counts). Two opens of the file,
even in one process, exclude each other. On network file systems flock is
only as good as the file system's support for it.

This module imports neither TensorFlow nor anything of dolg_tf.
"""

import fcntl
import os
import socket


class LockBusyError(Exception):
  """Another process (or another open in this one) holds the lock."""

  def __init__(self, path: str, holder: str):
    super().__init__(f"{path}: held by {holder}")
    self.path = path
    self.holder = holder


class LockFileError(OSError):
  """The lock file cannot be created or locked; errno/strerror are the OS's."""

  def __init__(self, path: str, action: str, error: OSError):
    super().__init__(error.errno, error.strerror or str(error), path)
    self.action = action


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
  return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(fd: int) -> str:
  try:
    text = os.pread(fd, 256, 0).decode("utf-8", "replace")
  except OSError:
    text = ""
  return " ".join(text.split()) or "pid unknown"


def holder_text() -> str:
  """What this process writes into a lock file it holds: `pid <pid> on <host>`."""
  return f"pid {os.getpid()} on {socket.gethostname()}"


class DirLock:
  """An exclusive flock on the file `path` (its folder must exist)."""

  def __init__(self, path: str):
    self.path = path
    self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> "DirLock":
    """Takes the lock without waiting; a no-op if this object holds it.

    Raises:
      LockBusyError: another holder has it (its pid and host in `holder`).
      LockFileError: the file cannot be created ("create the lock file") or
        locked ("lock"), e.g. on a read-only or full file system.
    """
    if self._fd is not None:
      return self
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
      except OSError as e:
        raise LockFileError(self.path, "create the lock file", e) from e
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LockBusyError(self.path, holder) from None
      except OSError as e:
        os.close(fd)
        raise LockFileError(self.path, "lock", e) from e
      # A holder may have removed the file between our open and flock: then
      # our lock is on a deleted file and another process can lock a new one.
      try:
        same = _same_file(os.stat(self.path), os.fstat(fd))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{holder_text()}\n".encode(), 0)
    except OSError:
      pass  # The lock holds anyway (e.g. a full disk); a refused process then names no pid.
    self._fd = fd
    return self

  def release(self) -> None:
    """Removes the lock file and drops the lock (a no-op if not held)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.unlink(self.path)  # Before unlocking: see `acquire`.
    except OSError:
      pass
    os.close(fd)

  def __enter__(self) -> "DirLock":
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()
