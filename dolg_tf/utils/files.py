"""Small file helpers shared by the DELF-format readers and writers."""

import os
import uuid


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` so that readers never see a partial file.

  The bytes go to a hidden temporary file in the same folder, which is then
  renamed over `path` with `os.replace` (atomic on POSIX when both are on the
  same file system). On failure the temporary file is removed and `path` is
  left as it was. The file gets the usual permissions (0o666 minus umask).

  Args:
    path: destination file; its folder must exist.
    data: the bytes to write.

  Raises:
    IOError: if the folder does not exist or the file cannot be written.
  """
  path = os.fspath(path)
  folder, name = os.path.split(os.path.abspath(path))
  tmp_path = os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  except OSError as e:
    raise OSError(f"{path}: cannot write ({e.strerror or e})") from e
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp_path, path)
  except BaseException as e:
    try:
      os.unlink(tmp_path)
    except OSError:
      pass
    if isinstance(e, OSError):
      raise OSError(f"{path}: cannot write ({e.strerror or e})") from e
    raise


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
