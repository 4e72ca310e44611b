"""failures.tsv: the images a run could not extract, one row per image, kept across runs.

Columns time, image_id, path, reason; fields backslash-escaped so that any
id, path or reason reads back exactly (`escape_field`). `FailureLog` keeps at
most one row per image id (a rerun that fails an image again replaces its row,
a rerun that succeeds removes it) and rewrites the file atomically;
`read_failures` reads it back; `failure_reason` is the reason column of an
exception.
"""

import datetime
import os
import re
import threading
import time
from collections.abc import Iterable

from dolg_tf.extraction import output_folder
from dolg_tf.extraction.task_sources import COLLISION_REASON_PREFIX
from dolg_tf.io import descriptor_files
from dolg_tf.utils import files as file_utils

FAILURES_FILE = "failures.tsv"

# failures.tsv fields are backslash-escaped, so any id, path or reason (tabs,
# newlines, runs of spaces, backslashes included) reads back exactly.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_ESCAPE_PATTERN = re.compile(r"\\([\\tnr])")


def escape_field(text) -> str:
  """A failures.tsv field: backslash, tab, newline and carriage return as \\\\, \\t, \\n, \\r."""
  return str(text).translate(_ESCAPES)


def unescape_field(text: str) -> str:
  """The inverse of `escape_field` (other backslashes are kept as they are)."""
  return _ESCAPE_PATTERN.sub(lambda m: _UNESCAPES[m.group(1)], text)


def _row_key(row: dict):
  """An image's row is keyed by its id; a duplicate-id row by (id, path), so success keeps it."""
  if row.get("reason", "").startswith(COLLISION_REASON_PREFIX):
    return (row["image_id"], row.get("path", ""))
  return row["image_id"]


class FailureLog:
  """failures.tsv: at most one `time, image_id, path, reason` row per image, thread-safe.

  The rows of earlier runs are read first. `add` puts (or replaces) an
  image's row, `resolve` removes the rows of images that now have a
  descriptor; rows of other images are kept. Rows are keyed by the exact id
  (fields are backslash-escaped in the file: `escape_field`); a duplicate-id
  row (`collision_reason`) is keyed by id and path, so the success of the
  path that kept the id does not remove it (`forget_collisions` does, when a
  run decides the collisions of that id again). The file is rewritten
  atomically (temporary file + rename), the first change at once (so an
  unwritable file stops a run at its first failure), later ones at most every
  `save_interval` seconds, the rest by `close`; it is removed when no rows
  remain.
  """

  COLUMNS = ("time", "image_id", "path", "reason")
  HEADER = "\t".join(COLUMNS) + "\n"

  def __init__(self, path: str, save_interval: float = 2.0):
    """Reads the rows of `path` if it exists.

    Raises:
      output_folder.OutputError: naming `path`, if it cannot be read.
    """
    self.path = path
    self.save_interval = save_interval
    self._lock = threading.Lock()
    self._rows = {}
    self._dirty = False
    self._last_save = None
    if os.path.lexists(path):
      try:
        rows = read_failures(path)
      except (OSError, UnicodeDecodeError) as e:
        raise output_folder.OutputError(
          f"{path}: cannot read the failures file ({descriptor_files.os_error_text(e)})"
        ) from e
      self._rows = {_row_key(r): r for r in rows if r.get("image_id")}

  def __len__(self) -> int:
    return len(self._rows)

  def image_ids(self) -> list[str]:
    """The ids that have a row (once each, duplicate-id rows included)."""
    with self._lock:
      return list(dict.fromkeys(row["image_id"] for row in self._rows.values()))

  def add(self, image_id: str, path: str, reason: str) -> None:
    """Records a failure of `image_id` (replacing an earlier row of it).

    Raises:
      output_folder.OutputError: naming the file, if it cannot be written.
    """
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    row = {"time": stamp, "image_id": str(image_id), "path": str(path), "reason": str(reason)}
    with self._lock:
      self._rows[_row_key(row)] = row
      self._changed()

  def resolve(self, image_ids: Iterable[str]) -> None:
    """Removes the rows of `image_ids` (they have a descriptor now); duplicate-id rows stay."""
    with self._lock:
      removed = [self._rows.pop(i) for i in image_ids if i in self._rows]
      if removed:
        self._changed()

  def forget_collisions(self, image_ids: Iterable[str]) -> None:
    """Removes the duplicate-id rows of `image_ids` (a run about to decide them again)."""
    image_ids = set(image_ids)
    with self._lock:
      stale = [k for k in self._rows if isinstance(k, tuple) and k[0] in image_ids]
      for key in stale:
        del self._rows[key]
      if stale:
        self._changed()

  def close(self) -> None:
    """Writes what is not written yet.

    Raises:
      output_folder.OutputError: naming the file, if it cannot be written.
    """
    with self._lock:
      if self._dirty:
        self._save()

  def _changed(self) -> None:
    self._dirty = True
    now = time.monotonic()
    if self._last_save is None or now - self._last_save >= self.save_interval:
      self._save()

  def _save(self) -> None:
    self._last_save = time.monotonic()
    try:
      if self._rows:
        lines = [
          "\t".join(escape_field(row.get(c, "")) for c in self.COLUMNS)
          for row in self._rows.values()
        ]
        file_utils.atomic_write_text(self.path, self.HEADER + "\n".join(lines) + "\n")
      elif os.path.lexists(self.path):
        os.unlink(self.path)
    except OSError as e:
      raise output_folder.OutputError(
        f"{self.path}: cannot write the failures file ({descriptor_files.os_error_text(e)})"
      ) from e
    self._dirty = False


def read_failures(path: str) -> list[dict]:
  """Rows of a failures.tsv file as dicts (time, image_id, path, reason), fields unescaped."""
  with open(path, encoding="utf-8", newline="") as f:
    lines = f.read().split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  if not lines:
    return []
  header = [unescape_field(c) for c in lines[0].split("\t")]
  return [dict(zip(header, map(unescape_field, line.split("\t")))) for line in lines[1:]]


def failure_reason(error: BaseException) -> str:
  """`<ExceptionType>: <first line>`, the reason column of failures.tsv."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"
