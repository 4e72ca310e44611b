"""Batch extraction of global descriptors over many images, resumable and overlapped.

    tasks = pipeline.tasks_from_paths(pipeline.list_images("images/"))
    summary = pipeline.run_extraction(extractor, tasks, "out/")
    ids, matrix = pipeline.read_descriptors("out/")

Work is overlapped in three stages: `num_threads` worker threads decode and
resize the next `prefetch` images (Pillow and NumPy release the GIL) while the
calling thread runs the model, and a background thread writes the results.
The loaders share a byte budget (`max_bytes_in_flight`, utils/memory_budget.py):
each waits, in image order, until the memory its image needs (estimated from
the header) fits, and the preprocessed image stays counted until the model has
used it, so more threads never mean more memory.

Outputs (`output_format`, layouts in io/descriptor_files.py):
  per_image: `<output_dir>/<image_id><suffix>`, a DatumProto of a float32 [D]
    (DELF's `.delg_global` layout), each written atomically.
  shards: descriptors are buffered and written `shard_size` at a time as
    `<output_dir>/descriptors-00000.npz` (+ `manifest.json`), for collections
    too large for one file per image. The descriptors buffered when the
    process is killed (at most `shard_size`) are extracted again on the next
    run; on an exception or Ctrl-C the buffer is written out first.

The output folder is checked before any image is read (created if needed,
proven writable: output_folder.prepare_output_dir) and locked for the run
(output_folder.OutputLock, an fcntl.flock a killed run cannot leave stale):
a second extraction into the same folder is refused, naming the pid and host
of the first.

Resuming: images whose output already exists (a per-image file, or an id in a
complete shard) are skipped without being read. Hidden temporary files left by
a killed run (`.<name>.<pid>.<hex>.tmp`) are removed when their process is gone.

Failures: every image that cannot be read, cropped, described or written, or
is too small (a side under 10 px after resizing, image_loading.MIN_IMAGE_SIZE)
or too large (`max_pixels`, from its header), is a row of
`<output_dir>/failures.tsv` (columns time, image_id, path, reason) and the run
goes on. The file holds one row per image id (a rerun that fails an image
again replaces its row, a rerun that succeeds removes it) and is rewritten
atomically. A write error about the whole folder (disk full, read-only file
system, permission denied: output_folder.FOLDER_ERRNOS) or a failures file
that cannot be written stops the run instead with ExtractionStopped, a
one-line message saying which and how many images were written: no temporary
file is left, and the images not written have no output, so the next run
extracts them.

Batching (`batch_size` > 1): decoded images are grouped by their resized
size (batching.ShapeBatcher) and each group goes through the model in one
forward (`extractor.extract_batch`, the export's batched signature).

Image ids are file names without their extension (as DELF names outputs,
and GLDv2's nested `a/b/c/<id>.jpg` layout needs). Two inputs with the same
id (`img.bmp` and `img.webp`, or `100CANON/IMG_0001.JPG` and
`101CANON/IMG_0001.JPG`) cannot both have an output: the first in input order
(folder walks are sorted) keeps the id, each later one is a failures.tsv row
(`duplicate image id ...: already used by <first path>`) and the rest of the
run goes on. Names
starting with "." are hidden files, skipped everywhere: a folder walk
(`list_images`) never lists them (nor hidden folders), and one named by a list
or ground truth is reported as a failure with that reason, never extracted
(its output would be a hidden file that no run finds again).
"""

import collections
import concurrent.futures
import csv
import dataclasses
import datetime
import io
import os
import queue
import re
import threading
import time
from collections.abc import Iterable, Sequence

import numpy as np
from absl import logging

from dolg_tf.data import gldv2_files
from dolg_tf.extraction import batching, local_extractor, output_folder
from dolg_tf.io import descriptor_files, image_loading
from dolg_tf.io.descriptor_reading import read_descriptors  # noqa: F401 (re-export)
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import images as images_lib
from dolg_tf.utils import memory_budget as budget_lib
from dolg_tf.utils import progress as progress_lib
from dolg_tf.utils import untrusted

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OUTPUT_FORMATS = ("per_image", "shards")
DEFAULT_SUFFIX = descriptor_files.DEFAULT_SUFFIX
FAILURES_FILE = "failures.tsv"
HIDDEN_REASON = (
  "hidden file name (starts with '.'): not extracted, as folder walks skip hidden files; "
  "rename the file to extract it"
)


@dataclasses.dataclass(frozen=True)
class ImageTask:
  """One image to describe: output id, file path and optional crop box (x1, y1, x2, y2)."""

  image_id: str
  path: str
  box: tuple[float, float, float, float] | None = None
  # Why the file must not be read (e.g. outside --images_dir): a failure row, never opened.
  refused: str = ""


@dataclasses.dataclass
class ExtractionSummary:
  """What a run did.

  Attributes:
    total: images requested.
    done: descriptors written by this run.
    skipped: images whose output already existed.
    failed: images that could not be read, described or written.
    seconds: wall time of the run.
    failures: (image_id, path, reason) of every failure.
    stopped: why the run stopped early ('disk full', 'read-only file
      system', ...; see ExtractionStopped), '' if it did not.
  """

  total: int = 0
  done: int = 0
  skipped: int = 0
  failed: int = 0
  seconds: float = 0.0
  failures: list = dataclasses.field(default_factory=list)
  stopped: str = ""

  @property
  def exit_code(self) -> int:
    """0 unless there was work and no image has a descriptor at the end.

    An image "succeeded" if it has a descriptor after the run: written now or
    found from an earlier run. So a run where every image failed returns 1,
    while re-running a finished collection (everything skipped, any known-bad
    files failing again) returns 0, as its first run did. An empty input
    returns 0.
    """
    return 1 if self.failed > 0 and self.done + self.skipped == 0 else 0


class ExtractionStopped(output_folder.OutputError):
  """The output folder cannot take more files (disk full, read-only, failures file unwritable).

  Attributes:
    summary: the ExtractionSummary of the run up to the stop.
  """

  def __init__(self, message: str, summary: ExtractionSummary):
    super().__init__(message)
    self.summary = summary


# ----------------------------------------------------------------------------- inputs


def image_id_from_path(path: str) -> str:
  """The output id of an image: its file name without the extension."""
  return os.path.splitext(os.path.basename(path))[0]


def is_hidden(name: str) -> bool:
  """Whether a file name (or image id) is hidden: starts with '.' (or is empty)."""
  return not name or name.startswith(".")


def list_images(images_dir: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Image files under `images_dir`, recursively, sorted (case-insensitive extensions).

  Hidden files and folders (names starting with '.') are skipped. Other
  non-folders with an image extension are listed whatever they are (a named
  pipe, a socket, a link to a device): loading refuses them without reading
  (images.open_file), each a failure.

  Raises:
    FileNotFoundError: naming the folder, if it does not exist.
  """
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"{images_dir}: images folder not found")
  extensions = tuple(e.lower() for e in extensions)
  paths = []
  for root, dirs, files in os.walk(images_dir):
    dirs[:] = [d for d in dirs if not is_hidden(d)]
    for name in files:
      if not is_hidden(name) and name.lower().endswith(extensions):
        paths.append(os.path.join(root, name))
  return sorted(paths)


def read_image_list(
  list_path: str, images_dir: str | None = None, allow_outside: bool = True
) -> list[str]:
  """Image paths from a UTF-8 text file, one per line (blank lines and `#` comments skipped).

  A relative entry is taken relative to `images_dir` when given, else to the
  current directory. An entry without an image extension whose `<entry>.jpg`
  exists refers to that file (DELF lists name images without extension); with
  `allow_outside` False that is only looked for inside `images_dir`.
  Missing files, hidden names (starting with '.') and entries outside
  `images_dir` are kept: the run reports them as failures (`outside_reason`).

  Raises:
    FileNotFoundError: naming the list, if it does not exist.
    ValueError: naming the list, the byte offset and the line, if it is not UTF-8.
  """
  text = untrusted.decode_text(file_utils.read_bytes(list_path), list_path)
  paths = []
  for line in text.splitlines():
    entry = line.strip()
    if not entry or entry.startswith("#"):
      continue
    path = os.path.join(images_dir, entry) if images_dir else entry
    probe = allow_outside or not images_dir or untrusted.is_inside(path, images_dir)
    if probe and not path.lower().endswith(IMAGE_EXTENSIONS) and not os.path.exists(path):
      if os.path.exists(path + ".jpg"):
        path += ".jpg"
    paths.append(path)
  return paths


def read_csv_image_ids(csv_path: str) -> list[str]:
  """The `id` column of a Google Landmarks v2 CSV (index.csv, test.csv, train.csv), in order.

  Ids are returned as written; `gldv2_id_reason` says which must not be read.

  Raises:
    FileNotFoundError: naming the file, if it does not exist.
    ValueError: naming the file, if it is not UTF-8, has no `id` column or a
      row without an id.
  """
  text = untrusted.decode_text(file_utils.read_bytes(csv_path), csv_path)
  reader = csv.DictReader(io.StringIO(text))
  if "id" not in (reader.fieldnames or []):
    raise ValueError(f"{csv_path}: no 'id' column (header: {reader.fieldnames})")
  ids = []
  for line, row in enumerate(untrusted.csv_rows(reader, csv_path), 2):
    image_id = (row.get("id") or "").strip()
    if not image_id:
      raise ValueError(f"{csv_path}:{line}: empty id")
    ids.append(image_id)
  return ids


def gldv2_image_path(images_dir: str, image_id: str) -> str:
  """The file of a GLDv2 image id (`<a>/<b>/<c>/<id>.jpg` or `<id>.jpg`, as the dataset builder).

  A missing image gets its nested `.jpg` path, so the run reports it as a
  failure; an id `gldv2_id_reason` refuses gets `<images_dir>/<id>.jpg`
  without any file being looked at.
  """
  if gldv2_id_reason(image_id):
    return os.path.join(images_dir, image_id + ".jpg")
  found = gldv2_files.find_image(images_dir, image_id)
  return found or gldv2_files.candidate_paths(images_dir, image_id)[0]


def outside_reason(path: str, images_dir: str) -> str:
  """Why `path` (an entry joined to `images_dir`) is refused, or '' if it lies inside it.

  The rule is lexical: os.path.normpath of the path must be `images_dir` or
  below it, so absolute entries elsewhere and `..` escapes are refused;
  symbolic links inside the folder are followed.
  """
  if untrusted.is_inside(path, images_dir):
    return ""
  return (
    f"{path}: outside the images folder {images_dir} (an absolute path or '..' in the entry); "
    "not read unless --allow_outside_images_dir is given"
  )


def gldv2_id_reason(image_id: str) -> str:
  """Why a GLDv2 id is refused ('/', '\\' or '..' in it: ids are file names), or ''."""
  problem = gldv2_files.id_problem(image_id)
  return f"GLDv2 {problem}" if problem else ""


def refusal_reason(task: ImageTask) -> str:
  """Why `task` is a failure without its file being opened (refused, hidden name), or ''."""
  if task.refused:
    return task.refused
  return HIDDEN_REASON if is_hidden(task.image_id) else ""


def tasks_from_paths(paths: Iterable[str], boxes: dict | None = None) -> list[ImageTask]:
  """One task per path, in order; `boxes` maps an image id to its crop box.

  Image ids repeat when two files differ only in folder or extension: the
  first path in input order keeps the id, each later one is refused
  (`mark_collisions`) and becomes a failures row. A path listed twice is kept
  once.
  """
  boxes = boxes or {}
  tasks = []
  for path in paths:
    image_id = image_id_from_path(path)
    box = boxes.get(image_id)
    tasks.append(ImageTask(image_id, path, None if box is None else tuple(float(v) for v in box)))
  return mark_collisions(tasks)


# The start of a failures.tsv reason of an image whose id an earlier input has.
COLLISION_REASON_PREFIX = "duplicate image id "


def collision_reason(image_id: str, kept_path: str) -> str:
  """The failures.tsv reason of an image not extracted because `kept_path` has its id."""
  return (
    f"{COLLISION_REASON_PREFIX}{image_id!r}: already used by {kept_path}; not extracted "
    "(outputs are named by file name without extension: rename the file, or extract "
    "each folder into its own output folder)"
  )


def mark_collisions(tasks: Sequence[ImageTask]) -> list[ImageTask]:
  """`tasks` with each repeated image id refused (`collision_reason`) after its first use.

  Among tasks not refused already, the first of an id (input order) keeps
  it; a later task with the same path and box is dropped (listed twice),
  one with another path or box gets `refused` naming the path that kept the
  id. Deterministic for a given input order (folder walks are sorted).
  """
  marked, first = [], {}
  for task in tasks:
    if refusal_reason(task):
      marked.append(task)
      continue
    earlier = first.setdefault(task.image_id, task)
    if earlier is task:
      marked.append(task)
    elif (earlier.path, earlier.box) == (task.path, task.box):
      logging.info("%s: listed twice, extracted once", task.path)
    else:
      reason = collision_reason(task.image_id, earlier.path)
      marked.append(dataclasses.replace(task, refused=reason))
  return marked


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


# ----------------------------------------------------------------------------- run


def image_shape(image) -> tuple[int, ...]:
  """The shape of a preprocessed image (a uint8 array or a PreprocessedImage): its batching key."""
  if isinstance(image, local_extractor.PreprocessedImage):
    image = image.image
  return tuple(np.shape(image))


def _log_progress(
  progress: progress_lib.Progress, summary: ExtractionSummary, force: bool = False
) -> None:
  progress.update(
    summary.done,
    processed=summary.done + summary.failed,
    force=force,
    failed=summary.failed,
    skipped=summary.skipped,
  )


def failure_reason(error: BaseException) -> str:
  """`<ExceptionType>: <first line>`, the reason column of failures.tsv."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"


def _is_stop(error: BaseException) -> bool:
  """Whether `error` concerns the whole output folder (the run stops) rather than one image."""
  return (
    isinstance(error, output_folder.OutputError)
    or output_folder.folder_errno(error) is not None
  )


def _stop_message(error: BaseException, summary: ExtractionSummary, todo: int, output_dir: str):
  detail = " ".join(str(error).split())
  not_written = max(todo - summary.done - summary.failed, 0)
  return (
    f"{output_dir}: extraction stopped ({summary.stopped}): {detail}; this run wrote "
    f"{summary.done}, failed {summary.failed}, left {not_written} not written "
    "(the next run extracts them)"
  )


def run_extraction(
  extractor,
  tasks: Sequence[ImageTask],
  output_dir: str,
  output_format: str = "per_image",
  suffix: str | None = None,
  num_threads: int = 2,
  prefetch: int = 8,
  shard_size: int = 100_000,
  log_interval: float = 30.0,
  max_pixels: int | None = None,
  lock: output_folder.OutputLock | None = None,
  batch_size: int = 1,
  max_bytes_in_flight: int | None = None,
) -> ExtractionSummary:
  """Describes every task's image and writes the descriptors; see the module doc.

  Args:
    extractor: has `load_and_preprocess(path, box)` (thread-safe) and
      `extract(image)` (e.g. extractor.Extractor), which returns a float32 [D]
      descriptor unless the extractor supplies its own writer: an optional
      `make_writer(output_dir)` (no disk access) returning a writer
      (`existing_ids`, `write(id, result)`, `flush`; DELG's
      local_extractor.LocalGlobalWriter) or None (the descriptors are written
      here); with its own writer `output_format` must be 'per_image'.
    tasks: the images (unique ids).
    output_dir: created if needed.
    output_format: 'per_image' or 'shards'.
    suffix: per-image file suffix; default `extractor.suffix` or DEFAULT_SUFFIX.
    num_threads: image decoding threads.
    prefetch: images decoded ahead of the model (bounds their number; their
      memory is bounded by `max_bytes_in_flight`).
    shard_size: descriptors per shard in 'shards' mode.
    log_interval: seconds between progress logs.
    max_pixels: images with more pixels are failures, refused from their
      header; default images.MAX_PIXELS. Needs an extractor with
      `preprocess(image, box)` (images are then loaded here with
      image_loading.load_and_preprocess) unless it is the default.
    lock: a held output_folder.OutputLock of `output_dir` (the command
      takes it before loading the model); by default the run takes its own.
    batch_size: up to this many decoded images of one resized size go
      through the model in one forward (`extractor.extract_batch`, see
      batching.py; at most max(batch_size, prefetch) images wait for their
      batch); 1 runs `extractor.extract` per image.
    max_bytes_in_flight: the memory budget of the images being decoded or
      waiting for the model (image_loading.estimate_load_bytes of each, from
      its header, then what its preprocessed image holds until the model has
      used it); a loader waits until its image fits, and an image larger than
      the whole budget is a failure. Default
      image_loading.MAX_BYTES_IN_FLIGHT. Images of an extractor without
      `preprocess` count only once loaded.

  Returns:
    An ExtractionSummary.

  Raises:
    ValueError: bad arguments or duplicate ids.
    output_folder.OutputError: the output folder is a file, not writable,
      or in use by another extraction; raised before any image is read.
    ExtractionStopped: the folder could not take more files (see module doc).
  """
  if output_format not in OUTPUT_FORMATS:
    raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
  if num_threads < 1 or prefetch < 1:
    raise ValueError(f"num_threads and prefetch must be >= 1, got {num_threads}, {prefetch}")
  if max_bytes_in_flight is not None and max_bytes_in_flight < 1:
    raise ValueError(f"max_bytes_in_flight must be positive, got {max_bytes_in_flight}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if batch_size > 1 and not hasattr(extractor, "extract_batch"):
    raise ValueError(f"{type(extractor).__name__} has no extract_batch: batch_size unused")
  if max_pixels is not None and max_pixels < 1:
    raise ValueError(f"max_pixels must be positive, got {max_pixels}")
  preprocess = getattr(extractor, "preprocess", None)
  if max_pixels not in (None, images_lib.MAX_PIXELS) and preprocess is None:
    raise ValueError(f"{type(extractor).__name__} has no preprocess(image, box): max_pixels unused")
  make_writer = getattr(extractor, "make_writer", None)
  own_writer = make_writer(output_dir) if make_writer is not None else None
  if own_writer is not None and output_format != "per_image":
    raise ValueError(f"{type(extractor).__name__} results are written per image only")
  tasks = mark_collisions(tasks)  # Tasks built by hand may repeat ids too.
  output_folder.prepare_output_dir(output_dir)
  own_lock = None
  if lock is None:
    own_lock = lock = output_folder.OutputLock(output_dir).acquire()
  try:
    return _run(
      extractor,
      tasks,
      output_dir,
      own_writer,
      output_format,
      suffix,
      num_threads,
      prefetch,
      shard_size,
      log_interval,
      max_pixels if preprocess is not None else None,
      batch_size,
      max_bytes_in_flight or image_loading.MAX_BYTES_IN_FLIGHT,
    )
  finally:
    if own_lock is not None:
      own_lock.release()


def _run(
  extractor,
  tasks,
  output_dir,
  own_writer,
  output_format,
  suffix,
  num_threads,
  prefetch,
  shard_size,
  log_interval,
  max_pixels,
  batch_size,
  max_bytes_in_flight,
) -> ExtractionSummary:
  """run_extraction once the arguments are checked and the folder is locked."""
  start = time.monotonic()
  for path in file_utils.remove_stale_temp_files(output_dir):
    logging.info("removed a temporary file of an interrupted run: %s", path)
  suffix = suffix or getattr(extractor, "suffix", None) or DEFAULT_SUFFIX
  if own_writer is not None:
    writer = own_writer
  elif output_format == "per_image":
    writer = descriptor_files.PerImageWriter(output_dir, suffix)
  else:
    writer = descriptor_files.ShardWriter(output_dir, shard_size)
  existing = writer.existing_ids()
  hidden = [t for t in tasks if refusal_reason(t)]  # hidden names, refused paths
  todo = [t for t in tasks if t.image_id not in existing and not refusal_reason(t)]
  summary = ExtractionSummary(total=len(tasks), skipped=len(tasks) - len(todo) - len(hidden))
  failures = FailureLog(os.path.join(output_dir, FAILURES_FILE))
  lock = threading.Lock()
  progress = progress_lib.Progress(len(todo), "extracted", "img", log_interval)
  logging.info(
    "%d images: %d already extracted, %d to do%s -> %s (%s)",
    len(tasks),
    summary.skipped,
    len(todo),
    f", {len(hidden)} refused (hidden names, paths outside the images folder)" if hidden else "",
    output_dir,
    output_format,
  )

  def fail(task: ImageTask, reason: str) -> None:
    failures.add(task.image_id, task.path, reason)
    with lock:
      summary.failed += 1
      summary.failures.append((task.image_id, task.path, reason))

  # Background writer.
  results = queue.Queue(maxsize=max(2 * prefetch, 16))
  pending = {}  # id -> task, buffered in a shard not yet written

  def record_written(written: list[str]) -> None:
    with lock:
      for image_id in written:
        pending.pop(image_id, None)
      summary.done += len(written)
    failures.resolve(written)

  def fail_pending(error: BaseException) -> None:
    with lock:
      lost = list(pending.values())
      pending.clear()
    for task in lost:
      fail(task, f"write failed: {failure_reason(error)}")

  # The error that ended the writer thread; the main thread raises it, so
  # the writer never dies silently (a failures file it cannot write included).
  writer_error = []

  def write_loop() -> None:
    try:
      while True:
        item = results.get()
        if item is None:
          break
        task, descriptor = item
        with lock:
          pending[task.image_id] = task
        try:
          written = writer.write(task.image_id, descriptor)
        except Exception as e:  # pylint: disable=broad-except
          if _is_stop(e):
            raise  # Disk full, read-only...: no later write can succeed.
          fail_pending(e)  # This image only; the run goes on.
          continue
        record_written(written)
      try:
        written = writer.flush()
      except Exception as e:  # pylint: disable=broad-except
        if _is_stop(e):
          raise
        fail_pending(e)
      else:
        record_written(written)
    except BaseException as e:  # pylint: disable=broad-except
      writer_error.append(e)  # re-raised by the main thread

  def check_writer() -> None:
    if writer_error:
      raise writer_error[0]

  def put(item) -> None:
    while True:
      check_writer()
      try:
        results.put(item, timeout=0.2)
        return
      except queue.Full:
        pass

  def reserve(task: ImageTask, ticket: budget_lib.Ticket, nbytes: int) -> None:
    try:
      ticket.acquire(nbytes)  # Waits for its turn and room in the budget.
    except budget_lib.TooLarge as e:
      raise images_lib.ImageError(f"{task.path}: image {e} (max_bytes_in_flight)") from e

  def load(task: ImageTask, ticket: budget_lib.Ticket):
    """Loads and preprocesses `task`'s image; `ticket` then holds the bytes of the result."""
    try:
      preprocess = getattr(extractor, "preprocess", None)
      if preprocess is None:
        ticket.charge(0)  # No estimate before decoding: the result alone is counted.
        image = extractor.load_and_preprocess(task.path, task.box)
      else:
        image = image_loading.load_and_preprocess(
          task.path,
          task.box,
          preprocess,
          max_pixels=max_pixels,
          min_size=getattr(extractor, "min_input_size", image_loading.MIN_IMAGE_SIZE),
          before_decode=lambda nbytes: reserve(task, ticket, nbytes),
        )
      ticket.charge(int(getattr(getattr(image, "image", image), "nbytes", 0)))
      return image
    except BaseException:
      ticket.release()
      raise

  error = None
  try:
    failures.resolve(existing)  # Done earlier (e.g. from another list): not a failure.
    failures.forget_collisions({t.image_id for t in tasks})  # Decided again below.
    for task in hidden:
      fail(task, refusal_reason(task))
    writer_thread = threading.Thread(target=write_loop, name="descriptor-writer", daemon=True)
    writer_thread.start()
    executor = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="image-loader")
    # Bytes of the images being decoded or waiting for the model, granted in
    # task order; an image's ticket is released once the model has used it.
    budget = budget_lib.ByteBudget(max_bytes_in_flight)
    charged = {}  # image id -> ticket, for the images in the batcher
    in_flight = collections.deque()
    next_task = iter(todo)

    def refill() -> None:
      while len(in_flight) < prefetch:
        task = next(next_task, None)
        if task is None:
          return
        ticket = budget.ticket()  # In task order: the oldest image is served first.
        in_flight.append((task, ticket, executor.submit(load, task, ticket)))

    def describe(batch: list) -> None:
      if len(batch) == 1:
        try:
          results = [extractor.extract(batch[0][1])]
        except Exception as e:  # pylint: disable=broad-except
          results = [e]
      else:
        results = extractor.extract_batch([image for _, image in batch])
      for (task, _), result in zip(batch, results):
        if isinstance(result, Exception):
          fail(task, f"extraction failed: {failure_reason(result)}")
          continue
        global_descriptor = result.get("global") if isinstance(result, dict) else result
        problem = (
          None
          if global_descriptor is None
          else descriptor_files.descriptor_problem(global_descriptor)
        )
        if problem is not None:  # A degenerate export: never written, never ranked.
          fail(task, f"model returned a zero/non-finite descriptor: {problem}")
        else:
          put((task, result))
      _log_progress(progress, summary)

    def consume(batches: list) -> None:
      """Runs the model on `batches`, then frees their images' bytes in the budget."""
      for batch in batches:
        try:
          describe(batch)
        finally:
          for task, _ in batch:
            charged.pop(task.image_id).release()

    batcher = batching.ShapeBatcher(batch_size, max(batch_size, prefetch))
    try:
      refill()
      while in_flight:
        check_writer()
        task, ticket, future = in_flight.popleft()
        refill()
        while not future.done():
          concurrent.futures.wait([future], timeout=0.1)
          if len(batcher) and budget.stalled():
            # The next image waits for bytes held by images waiting for a
            # batch: describe those now, in smaller batches.
            consume(batcher.flush())
        try:
          image = future.result()
        except Exception as e:  # pylint: disable=broad-except
          fail(task, failure_reason(e))  # `load` released its ticket.
          continue
        charged[task.image_id] = ticket
        consume(batcher.add(image_shape(image), (task, image)))
        del image
      consume(batcher.flush())
    finally:
      budget.close()  # Loaders waiting for room give up: the pool can shut down.
      for _, _, future in in_flight:
        future.cancel()
      executor.shutdown(wait=True)
      # The writer writes what is queued, then flushes the shard buffer.
      while writer_thread.is_alive():
        try:
          results.put(None, timeout=0.2)
          break
        except queue.Full:
          pass
      writer_thread.join()
    check_writer()
  except BaseException as e:  # pylint: disable=broad-except
    error = e
  try:
    failures.close()
  except output_folder.OutputError as e:
    if error is None:
      error = e
  summary.seconds = time.monotonic() - start
  if error is not None and _is_stop(error):
    code = output_folder.folder_errno(error)
    summary.stopped = output_folder.FOLDER_ERRNOS.get(code, "output not writable")
    for path in file_utils.remove_own_temp_files(output_dir):
      logging.info("removed a temporary file of the stopped run: %s", path)
    message = _stop_message(error, summary, len(todo), output_dir)
    logging.error("%s", message)
    raise ExtractionStopped(message, summary) from error
  if error is not None:
    raise error
  _log_progress(progress, summary, force=True)
  logging.info(
    "finished in %.1fs: %d written, %d skipped, %d failed%s",
    summary.seconds,
    summary.done,
    summary.skipped,
    summary.failed,
    f" (see {failures.path})" if summary.failed else "",
  )
  return summary
