"""Batch extraction of global descriptors over many images, resumable and overlapped.

    tasks = task_sources.tasks_from_paths(task_sources.list_images("images/"))
    summary = pipeline.run_extraction(extractor, tasks, "out/")
    ids, matrix = descriptor_reading.read_descriptors("out/")

The extractor is anything with ExtractorProtocol's methods (extractor.Extractor);
optional capabilities are declared protocols too (run_interface.py: Preprocessing,
Batching, OwnWriter, SizeLimited). Where the images come from: task_sources.py;
the failures file: failure_log.py; the writer thread: background_writer.py.

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
`<output_dir>/failures.tsv` (failure_log.py: time, image_id, path, reason) and the run
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

Image ids, duplicate ids and hidden names: task_sources.py (a refused task is
a failures.tsv row, never opened).
"""

import collections
import concurrent.futures
import os
import threading
import time
from collections.abc import Sequence

from absl import logging

from dolg_tf.extraction import (
  background_writer,
  batching,
  failure_log,
  output_folder,
  run_interface,
  task_sources,
)
from dolg_tf.io import descriptor_files, image_loading
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import images as images_lib
from dolg_tf.utils import memory_budget as budget_lib
from dolg_tf.utils import progress as progress_lib

# ----------------------------------------------------------------------------- run


def run_extraction(
  extractor: run_interface.ExtractorProtocol,
  tasks: Sequence[task_sources.ImageTask],
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
) -> run_interface.ExtractionSummary:
  """Describes every task's image and writes the descriptors; see the module doc.

  Args:
    extractor: a run_interface.ExtractorProtocol (e.g. extractor.Extractor): `extract`
      returns a float32 [D] descriptor unless the extractor supplies its own
      writer (run_interface.OwnWriter: `make_writer(output_dir)` returns one, e.g. DELG's
      local_extractor.LocalGlobalWriter, or None: the descriptors are written
      here); with its own writer `output_format` must be 'per_image'.
    tasks: the images (task_sources.ImageTask; unique ids).
    output_dir: created if needed.
    output_format: 'per_image' or 'shards'.
    suffix: per-image file suffix; default `extractor.suffix` or DEFAULT_SUFFIX.
    num_threads: image decoding threads.
    prefetch: images decoded ahead of the model (bounds their number; their
      memory is bounded by `max_bytes_in_flight`).
    shard_size: descriptors per shard in 'shards' mode.
    log_interval: seconds between progress logs.
    max_pixels: images with more pixels are failures, refused from their
      header; default images.MAX_PIXELS. Needs a run_interface.Preprocessing extractor
      (images are then loaded here with image_loading.load_and_preprocess)
      unless it is the default.
    lock: a held output_folder.OutputLock of `output_dir` (the command
      takes it before loading the model); by default the run takes its own.
    batch_size: up to this many decoded images of one resized size go
      through the model in one forward (a run_interface.Batching extractor's
      `extract_batch`, see batching.py; at most max(batch_size, prefetch)
      images wait for their batch); 1 runs `extractor.extract` per image.
    max_bytes_in_flight: the memory budget of the images being decoded or
      waiting for the model (image_loading.estimate_load_bytes of each, from
      its header, then what its preprocessed image holds until the model has
      used it); a loader waits until its image fits, and an image larger than
      the whole budget is a failure. Default
      image_loading.MAX_BYTES_IN_FLIGHT. Images of an extractor that is not
      run_interface.Preprocessing count only once loaded.

  Returns:
    A run_interface.ExtractionSummary.

  Raises:
    ValueError: bad arguments or duplicate ids.
    output_folder.OutputError: the output folder is a file, not writable,
      or in use by another extraction; raised before any image is read.
    run_interface.ExtractionStopped: the folder could not take more files (see module doc).
  """
  options = run_interface.RunOptions(
    output_format,
    suffix,
    num_threads,
    prefetch,
    shard_size,
    log_interval,
    max_pixels,
    batch_size,
    max_bytes_in_flight,
  )
  return ExtractionRun(extractor, tasks, output_dir, options).run(lock)


class ExtractionRun:
  """One run_extraction: loader threads, the model on the calling thread, a writer thread."""

  def __init__(
    self,
    extractor: run_interface.ExtractorProtocol,
    tasks: Sequence[task_sources.ImageTask],
    output_dir: str,
    options: run_interface.RunOptions,
  ):
    """Checks the options against the extractor (no disk access).

    Raises:
      ValueError: bad options, or options the extractor cannot use.
    """
    options.check(extractor)
    self.extractor = extractor
    self.output_dir = output_dir
    self.options = options
    self.own_writer = (
      extractor.make_writer(output_dir) if isinstance(extractor, run_interface.OwnWriter) else None
    )
    if self.own_writer is not None and options.output_format != "per_image":
      raise ValueError(f"{type(extractor).__name__} results are written per image only")
    self.tasks = task_sources.mark_collisions(tasks)  # Tasks built by hand may repeat ids too.
    self.preprocess = (
      extractor.preprocess if isinstance(extractor, run_interface.Preprocessing) else None
    )
    self.min_size = (
      extractor.min_input_size
      if isinstance(extractor, run_interface.SizeLimited)
      else image_loading.MIN_IMAGE_SIZE
    )
    self.max_pixels = options.max_pixels if self.preprocess is not None else None
    self._lock = threading.Lock()

  def run(self, lock: output_folder.OutputLock | None = None) -> run_interface.ExtractionSummary:
    """Prepares and locks the output folder (unless `lock` holds it), then extracts."""
    output_folder.prepare_output_dir(self.output_dir)
    own_lock = None
    if lock is None:
      own_lock = output_folder.OutputLock(self.output_dir).acquire()
    try:
      return self._run()
    finally:
      if own_lock is not None:
        own_lock.release()

  # --------------------------------------------------------------------------- setup

  def _descriptor_writer(self):
    if self.own_writer is not None:
      return self.own_writer
    if self.options.output_format == "per_image":
      suffix = self.options.suffix or self.extractor.suffix or descriptor_files.DEFAULT_SUFFIX
      return descriptor_files.PerImageWriter(self.output_dir, suffix)
    return descriptor_files.ShardWriter(self.output_dir, self.options.shard_size)

  def _plan(self, writer) -> None:
    """Sorts the tasks into done before, refused and to do; opens the failures file."""
    existing = writer.existing_ids()
    self.existing = existing
    self.refused = [t for t in self.tasks if task_sources.refusal_reason(t)]
    self.todo = [
      t for t in self.tasks if t.image_id not in existing and not task_sources.refusal_reason(t)
    ]
    total, refused = len(self.tasks), len(self.refused)
    self.summary = run_interface.ExtractionSummary(
      total=total, skipped=total - len(self.todo) - refused
    )
    self.failures = failure_log.FailureLog(os.path.join(self.output_dir, failure_log.FAILURES_FILE))
    self.progress = progress_lib.Progress(
      len(self.todo), "extracted", "img", self.options.log_interval
    )
    logging.info(
      "%d images: %d already extracted, %d to do%s -> %s (%s)",
      total,
      self.summary.skipped,
      len(self.todo),
      f", {refused} refused (hidden names, paths outside the images folder)" if refused else "",
      self.output_dir,
      self.options.output_format,
    )

  # --------------------------------------------------------------------------- bookkeeping

  def _fail(self, task: task_sources.ImageTask, reason: str) -> None:
    self.failures.add(task.image_id, task.path, reason)
    with self._lock:
      self.summary.failed += 1
      self.summary.failures.append((task.image_id, task.path, reason))

  def _written(self, written: list[str]) -> None:
    with self._lock:
      self.summary.done += len(written)
    self.failures.resolve(written)

  def _lost(self, tasks: list, error: BaseException) -> None:
    for task in tasks:
      self._fail(task, f"write failed: {failure_log.failure_reason(error)}")

  def _log_progress(self, force: bool = False) -> None:
    summary = self.summary
    self.progress.update(
      summary.done,
      processed=summary.done + summary.failed,
      force=force,
      failed=summary.failed,
      skipped=summary.skipped,
    )

  # --------------------------------------------------------------------------- the stages

  def _load(self, task: task_sources.ImageTask, ticket: budget_lib.Ticket):
    """Loads and preprocesses `task`'s image; `ticket` then holds the bytes of the result."""

    def reserve(nbytes: int) -> None:
      try:
        ticket.acquire(nbytes)  # Waits for its turn and room in the budget.
      except budget_lib.TooLarge as e:
        raise images_lib.ImageError(f"{task.path}: image {e} (max_bytes_in_flight)") from e

    try:
      if self.preprocess is None:
        ticket.charge(0)  # No estimate before decoding: the result alone is counted.
        image = self.extractor.load_and_preprocess(task.path, task.box)
      else:
        image = image_loading.load_and_preprocess(
          task.path,
          task.box,
          self.preprocess,
          max_pixels=self.max_pixels,
          min_size=self.min_size,
          before_decode=reserve,
        )
      ticket.charge(int(getattr(getattr(image, "image", image), "nbytes", 0)))
      return image
    except BaseException:
      ticket.release()
      raise

  def _describe(self, batch: list) -> None:
    """Runs the model on a batch of (task, image); queues the results, records the failures."""
    if len(batch) == 1:
      try:
        results = [self.extractor.extract(batch[0][1])]
      except Exception as e:  # pylint: disable=broad-except
        results = [e]
    else:
      results = self.extractor.extract_batch([image for _, image in batch])
    for (task, _), result in zip(batch, results):
      if isinstance(result, Exception):
        self._fail(task, f"extraction failed: {failure_log.failure_reason(result)}")
        continue
      global_descriptor = result.get("global") if isinstance(result, dict) else result
      problem = (
        None
        if global_descriptor is None
        else descriptor_files.descriptor_problem(global_descriptor)
      )
      if problem is not None:  # A degenerate export: never written, never ranked.
        self._fail(task, f"model returned a zero/non-finite descriptor: {problem}")
      else:
        self.writer.put((task, result))
    self._log_progress()

  def _consume(self, batches: list) -> None:
    """Runs the model on `batches`, then frees their images' bytes in the budget."""
    for batch in batches:
      try:
        self._describe(batch)
      finally:
        for task, _ in batch:
          self._charged.pop(task.image_id).release()

  def _extract_todo(self, executor, budget: budget_lib.ByteBudget) -> None:
    """Loads the images ahead (in task order) and feeds them to the model by size."""
    in_flight = self._in_flight
    next_task = iter(self.todo)
    prefetch, batch_size = self.options.prefetch, self.options.batch_size

    def refill() -> None:
      while len(in_flight) < prefetch:
        task = next(next_task, None)
        if task is None:
          return
        ticket = budget.ticket()  # In task order: the oldest image is served first.
        in_flight.append((task, ticket, executor.submit(self._load, task, ticket)))

    batcher = batching.ShapeBatcher(batch_size, max(batch_size, prefetch))
    refill()
    while in_flight:
      self.writer.check()
      task, ticket, future = in_flight.popleft()
      refill()
      while not future.done():
        concurrent.futures.wait([future], timeout=0.1)
        if len(batcher) and budget.stalled():
          # The next image waits for bytes held by images waiting for a
          # batch: describe those now, in smaller batches.
          self._consume(batcher.flush())
      try:
        image = future.result()
      except Exception as e:  # pylint: disable=broad-except
        self._fail(task, failure_log.failure_reason(e))  # `_load` released its ticket.
        continue
      self._charged[task.image_id] = ticket
      self._consume(batcher.add(batching.image_shape(image), (task, image)))
      del image
    self._consume(batcher.flush())

  def _extract(self) -> None:
    """Everything between the plan and the summary; raises what stopped the run."""
    self.failures.resolve(self.existing)  # Done earlier (e.g. from another list): not a failure.
    self.failures.forget_collisions({t.image_id for t in self.tasks})  # Decided again below.
    for task in self.refused:
      self._fail(task, task_sources.refusal_reason(task))
    self.writer.start()
    executor = concurrent.futures.ThreadPoolExecutor(
      self.options.num_threads, thread_name_prefix="image-loader"
    )
    # Bytes of the images being decoded or waiting for the model, granted in
    # task order; an image's ticket is released once the model has used it.
    budget = budget_lib.ByteBudget(
      self.options.max_bytes_in_flight or image_loading.MAX_BYTES_IN_FLIGHT
    )
    self._charged = {}  # image id -> ticket, for the images in the batcher
    self._in_flight = collections.deque()
    try:
      self._extract_todo(executor, budget)
    finally:
      budget.close()  # Loaders waiting for room give up: the pool can shut down.
      for _, _, future in self._in_flight:
        future.cancel()
      executor.shutdown(wait=True)
      self.writer.close()  # Writes what is queued, then flushes the shard buffer.
    self.writer.check()

  def _run(self) -> run_interface.ExtractionSummary:
    start = time.monotonic()
    for path in file_utils.remove_stale_temp_files(self.output_dir):
      logging.info("removed a temporary file of an interrupted run: %s", path)
    descriptor_writer = self._descriptor_writer()
    self._plan(descriptor_writer)
    self.writer = background_writer.BackgroundWriter(
      descriptor_writer, self._written, self._lost, max(2 * self.options.prefetch, 16)
    )
    error = None
    try:
      self._extract()
    except BaseException as e:  # pylint: disable=broad-except
      error = e
    try:
      self.failures.close()
    except output_folder.OutputError as e:
      if error is None:
        error = e
    self.summary.seconds = time.monotonic() - start
    if error is not None and background_writer.is_stop(error):
      self._stop(error)
    if error is not None:
      raise error
    return self._finish()

  def _stop(self, error: BaseException) -> None:
    """Raises ExtractionStopped for a folder-wide error, after removing this run's temp files."""
    summary = self.summary
    summary.stopped = output_folder.FOLDER_ERRNOS.get(
      output_folder.folder_errno(error), "output not writable"
    )
    for path in file_utils.remove_own_temp_files(self.output_dir):
      logging.info("removed a temporary file of the stopped run: %s", path)
    detail = " ".join(str(error).split())
    not_written = max(len(self.todo) - summary.done - summary.failed, 0)
    message = (
      f"{self.output_dir}: extraction stopped ({summary.stopped}): {detail}; this run wrote "
      f"{summary.done}, failed {summary.failed}, left {not_written} not written "
      "(the next run extracts them)"
    )
    logging.error("%s", message)
    raise run_interface.ExtractionStopped(message, summary) from error

  def _finish(self) -> run_interface.ExtractionSummary:
    self._log_progress(force=True)
    summary = self.summary
    logging.info(
      "finished in %.1fs: %d written, %d skipped, %d failed%s",
      summary.seconds,
      summary.done,
      summary.skipped,
      summary.failed,
      f" (see {self.failures.path})" if summary.failed else "",
    )
    return summary
