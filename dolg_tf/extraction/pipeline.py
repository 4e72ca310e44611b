"""Batch extraction of global descriptors over many images, resumable and overlapped.

    tasks = pipeline.tasks_from_paths(pipeline.list_images("images/"))
    summary = pipeline.run_extraction(extractor, tasks, "out/")
    ids, matrix = pipeline.read_descriptors("out/")

Work is overlapped in three stages: `num_threads` worker threads decode and
resize the next `prefetch` images (Pillow and NumPy release the GIL) while the
calling thread runs the model, and a background thread writes the results.

Outputs (`output_format`, layouts in descriptor_store.py):
  per_image: `<output_dir>/<image_id><suffix>`, a DatumProto of a float32 [D]
    (DELF's `.delg_global` layout), each written atomically.
  shards: descriptors are buffered and written `shard_size` at a time as
    `<output_dir>/descriptors-00000.npz` (+ `manifest.json`), for collections
    too large for one file per image. The descriptors buffered when the
    process is killed (at most `shard_size`) are extracted again on the next
    run; on an exception or Ctrl-C the buffer is written out first.

Resuming: images whose output already exists (a per-image file, or an id in a
complete shard) are skipped without being read. Hidden temporary files left by
a killed run (`.<name>.<pid>.<hex>.tmp`) are removed when their process is gone.

Failures: every image that cannot be read, cropped, described or written is
appended to `<output_dir>/failures.tsv` (columns time, image_id, path, reason;
one line per failure, appended with a single write) and the run goes on.

Image ids are file names without their extension (as DELF names outputs);
two inputs with the same id are rejected before any work starts.
"""

import collections
import concurrent.futures
import dataclasses
import datetime
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence

from absl import logging

from dolg_tf.extraction import descriptor_store
from dolg_tf.extraction.descriptor_store import read_descriptors  # noqa: F401 (re-export)
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import progress as progress_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
OUTPUT_FORMATS = ("per_image", "shards")
DEFAULT_SUFFIX = descriptor_store.DEFAULT_SUFFIX
FAILURES_FILE = "failures.tsv"


@dataclasses.dataclass(frozen=True)
class ImageTask:
  """One image to describe: output id, file path and optional crop box (x1, y1, x2, y2)."""

  image_id: str
  path: str
  box: tuple[float, float, float, float] | None = None


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
  """

  total: int = 0
  done: int = 0
  skipped: int = 0
  failed: int = 0
  seconds: float = 0.0
  failures: list = dataclasses.field(default_factory=list)

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


# ----------------------------------------------------------------------------- inputs


def image_id_from_path(path: str) -> str:
  """The output id of an image: its file name without the extension."""
  return os.path.splitext(os.path.basename(path))[0]


def list_images(images_dir: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Image files under `images_dir`, recursively, sorted (case-insensitive extensions).

  Raises:
    FileNotFoundError: naming the folder, if it does not exist.
  """
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"{images_dir}: images folder not found")
  extensions = tuple(e.lower() for e in extensions)
  paths = []
  for root, dirs, files in os.walk(images_dir):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in files:
      if not name.startswith(".") and name.lower().endswith(extensions):
        paths.append(os.path.join(root, name))
  return sorted(paths)


def read_image_list(list_path: str, images_dir: str | None = None) -> list[str]:
  """Image paths from a text file, one per line (blank lines and `#` comments skipped).

  A relative entry is taken relative to `images_dir` when given, else to the
  current directory. An entry without an image extension whose `<entry>.jpg`
  exists refers to that file (DELF lists name images without extension).
  Missing files are kept: they are reported as failures by the run.

  Raises:
    FileNotFoundError: naming the list, if it does not exist.
  """
  text = file_utils.read_bytes(list_path).decode("utf-8")
  paths = []
  for line in text.splitlines():
    entry = line.strip()
    if not entry or entry.startswith("#"):
      continue
    path = os.path.join(images_dir, entry) if images_dir else entry
    if not path.lower().endswith(IMAGE_EXTENSIONS) and not os.path.exists(path):
      if os.path.exists(path + ".jpg"):
        path += ".jpg"
    paths.append(path)
  return paths


def tasks_from_paths(paths: Iterable[str], boxes: dict | None = None) -> list[ImageTask]:
  """One task per path; `boxes` maps an image id to its crop box.

  Raises:
    ValueError: two paths give the same image id (both named).
  """
  boxes = boxes or {}
  tasks, seen = [], {}
  for path in paths:
    image_id = image_id_from_path(path)
    if image_id in seen:
      raise ValueError(
        f"{path}: image id {image_id!r} already used by {seen[image_id]}; outputs would collide"
      )
    seen[image_id] = path
    box = boxes.get(image_id)
    tasks.append(ImageTask(image_id, path, None if box is None else tuple(float(v) for v in box)))
  return tasks


# ----------------------------------------------------------------------------- failures


def _sanitize(text: str) -> str:
  return " ".join(str(text).split())


class FailureLog:
  """Appends `time, image_id, path, reason` lines to a TSV file, thread-safe."""

  HEADER = "time\timage_id\tpath\treason\n"

  def __init__(self, path: str):
    self.path = path
    self._lock = threading.Lock()

  def add(self, image_id: str, path: str, reason: str) -> None:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    line = "\t".join([stamp, _sanitize(image_id), _sanitize(path), _sanitize(reason)]) + "\n"
    with self._lock:
      fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
      try:
        data = line.encode("utf-8")
        if os.fstat(fd).st_size == 0:
          data = self.HEADER.encode("utf-8") + data
        os.write(fd, data)
      finally:
        os.close(fd)


def read_failures(path: str) -> list[dict]:
  """Rows of a failures.tsv file as dicts (time, image_id, path, reason)."""
  rows = []
  with open(path, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    for line in f:
      rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
  return rows


# ----------------------------------------------------------------------------- run


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


def _reason(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"


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
    prefetch: images decoded ahead of the model (bounds memory).
    shard_size: descriptors per shard in 'shards' mode.
    log_interval: seconds between progress logs.

  Returns:
    An ExtractionSummary.

  Raises:
    ValueError: bad arguments or duplicate ids.
  """
  if output_format not in OUTPUT_FORMATS:
    raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
  if num_threads < 1 or prefetch < 1:
    raise ValueError(f"num_threads and prefetch must be >= 1, got {num_threads}, {prefetch}")
  make_writer = getattr(extractor, "make_writer", None)
  own_writer = make_writer(output_dir) if make_writer is not None else None
  if own_writer is not None and output_format != "per_image":
    raise ValueError(f"{type(extractor).__name__} results are written per image only")
  ids = [t.image_id for t in tasks]
  if len(set(ids)) != len(ids):
    duplicates = sorted(i for i, c in collections.Counter(ids).items() if c > 1)
    raise ValueError(f"duplicate image ids: {duplicates[:5]}")
  start = time.monotonic()
  os.makedirs(output_dir, exist_ok=True)
  for path in descriptor_store.remove_stale_temp_files(output_dir):
    logging.info("removed a temporary file of an interrupted run: %s", path)
  suffix = suffix or getattr(extractor, "suffix", None) or DEFAULT_SUFFIX
  if own_writer is not None:
    writer = own_writer
  elif output_format == "per_image":
    writer = descriptor_store.PerImageWriter(output_dir, suffix)
  else:
    writer = descriptor_store.ShardWriter(output_dir, shard_size)
  existing = writer.existing_ids()
  todo = [t for t in tasks if t.image_id not in existing]
  summary = ExtractionSummary(total=len(tasks), skipped=len(tasks) - len(todo))
  failures = FailureLog(os.path.join(output_dir, FAILURES_FILE))
  lock = threading.Lock()
  progress = progress_lib.Progress(len(todo), "extracted", "img", log_interval)
  logging.info(
    "%d images: %d already extracted, %d to do -> %s (%s)",
    len(tasks),
    summary.skipped,
    len(todo),
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

  def fail_pending(error: BaseException) -> None:
    with lock:
      lost = list(pending.values())
      pending.clear()
    for task in lost:
      fail(task, f"write failed: {_reason(error)}")

  writer_error = []  # a fatal (non-Exception) error of the writer thread

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
          record_written(writer.write(task.image_id, descriptor))
        except Exception as e:  # pylint: disable=broad-except
          fail_pending(e)
      try:
        record_written(writer.flush())
      except Exception as e:  # pylint: disable=broad-except
        fail_pending(e)
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

  writer_thread = threading.Thread(target=write_loop, name="descriptor-writer", daemon=True)
  writer_thread.start()

  def load(task: ImageTask):
    return extractor.load_and_preprocess(task.path, task.box)

  executor = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="image-loader")
  in_flight = collections.deque()
  next_task = iter(todo)

  def refill() -> None:
    while len(in_flight) < prefetch:
      task = next(next_task, None)
      if task is None:
        return
      in_flight.append((task, executor.submit(load, task)))

  try:
    refill()
    while in_flight:
      task, future = in_flight.popleft()
      refill()
      try:
        image = future.result()
      except Exception as e:  # pylint: disable=broad-except
        fail(task, _reason(e))
        continue
      try:
        descriptor = extractor.extract(image)
      except Exception as e:  # pylint: disable=broad-except
        fail(task, f"extraction failed: {_reason(e)}")
        continue
      del image
      put((task, descriptor))
      _log_progress(progress, summary)
  finally:
    for _, future in in_flight:
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
  summary.seconds = time.monotonic() - start
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
