r"""The Apache Beam extraction pipeline: the same inputs and outputs as extract_features.

    tasks = task_sources.tasks_from_paths(task_sources.list_images("images/"))
    counts = beam_pipeline.run_pipeline("dolg.pbtxt", tasks, "/abs/out", options)
    # {'done': ..., 'skipped': ..., 'failed': ..., 'seconds': ..., 'total': ...}

The command is beam_extract.py.

The pipeline:
  1. Plan (on the launcher, no model): the output folder is listed once and
     the images whose files all exist are skipped without being read
     (`plan_extraction`); the rest become the pipeline's input. Stale
     temporary files of killed local processes are removed first.
  2. `beam.Create` -> `Reshuffle` (spreads the images over the workers) ->
     ExtractDoFn: each worker process loads the SavedModel once
     (apache_beam.utils.shared, shared by the DoFn instances of a process),
     decodes with the project's image loader (image_loading, as
     extract_features), groups equal-size images within a bundle into
     batches of `--batch_size` (batching.ShapeBatcher, the export's batched
     signature) and writes each image's files atomically (the writers of
     extract_features: DatumProto `.delg_global`-style files, DELG's
     `.delg_local` too). An image whose files appeared meanwhile (a retried
     bundle, a concurrent run) is skipped; a retried bundle rewrites the same
     files atomically, so no output is ever partial or duplicated.
  3. Failures (unreadable, too small, too large, non-finite descriptors, a
     write error) are a tagged side output, combined into `failures.tsv`
     (one row per image, failure_log.FailureLog: rows of earlier runs are kept
     unless the image has its files now), written atomically once.
  Counters (namespace "dolg_extract"): done, skipped, failed; the command
  prints them when the pipeline finishes.

A write error about the whole output folder (disk full, quota, read-only,
permission: output_folder.FOLDER_ERRNOS) is not an image's failure: the
worker stops describing images (counters `unwritten_<errno>`, and
`failures_unwritten_<errno>` if failures.tsv cannot be written either) and the
launcher raises one output_folder.OutputError naming the folder, how many
images were written and how many are left for the next run. An interrupted
launcher (Ctrl-C, SIGTERM) stops its local workers and removes their
temporary files before it exits.

Only per-image outputs are written (`--output_format=shards` is
extract_features' single-writer layout). Images and outputs are read and
written with local file APIs: on a cluster they must live on a file system
every worker mounts (NFS, Filestore, a FUSE mount of a bucket).
"""

import os
import time

import apache_beam as beam
from absl import logging
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.utils import shared

from dolg_tf.extraction import batching, failure_log, output_folder, task_sources
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import config_io, descriptor_files, image_loading
from dolg_tf.utils import beam_cli
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import images as images_lib

COUNTER_NAMESPACE = "dolg_extract"
COUNTER_NAMES = ("done", "skipped", "failed")
# Images not written because the folder took no more files: `unwritten_<errno>`;
# a failures.tsv that could not be written: `failures_unwritten_<errno>` (0: not an OS error).
UNWRITTEN_PREFIX = "unwritten_"
FAILURES_UNWRITTEN_PREFIX = "failures_unwritten_"
FAILURES_TAG = "failures"


def output_names(config: config_io.DolgConfig, image_id: str) -> list[str]:
  """The file names extraction writes for `image_id` under `config` (no model needed)."""
  names = [image_id + config.global_descriptor_suffix] if config.use_global_features else []
  if config.use_local_features:
    names.append(image_id + config.local_descriptor_suffix)
  return names


def plan_extraction(config, tasks, output_dir: str) -> tuple[list, int, list]:
  """Splits `tasks` into (to do, number already done, hidden names) by one listing of the folder.

  An image is done when every file of `output_names` exists. Hidden names
  (task_sources.is_hidden) and refused tasks (ImageTask.refused, e.g. a path
  outside the images folder) are never extracted; they are reported as failures.
  """
  try:
    present = {e.name for e in os.scandir(output_dir) if not e.name.startswith(".")}
  except FileNotFoundError:
    present = set()
  todo, hidden, skipped = [], [], 0
  for task in tasks:
    if task_sources.refusal_reason(task):
      hidden.append(task)
    elif all(name in present for name in output_names(config, task.image_id)):
      skipped += 1
    else:
      todo.append(task)
  return todo, skipped, hidden


class _Loaded:
  """The per-process Extractor (apache_beam.utils.shared needs a weak-referenceable object)."""

  def __init__(self, extractor):
    self.extractor = extractor


class ExtractDoFn(beam.DoFn):
  """Describes and writes images (task_sources.ImageTask in, image ids out; failures tagged)."""

  def __init__(self, config_path: str, output_dir: str, batch_size: int, max_pixels: int, handle):
    self._config_path = config_path
    self._output_dir = output_dir
    self._batch_size = batch_size
    self._max_pixels = max_pixels
    self._handle = handle
    self._done = Metrics.counter(COUNTER_NAMESPACE, "done")
    self._skipped = Metrics.counter(COUNTER_NAMESPACE, "skipped")
    self._failed = Metrics.counter(COUNTER_NAMESPACE, "failed")

  def setup(self):
    def load():
      return _Loaded(extractor_lib.Extractor.from_config_file(self._config_path))

    self._extractor = self._handle.acquire(load).extractor
    writer = self._extractor.make_writer(self._output_dir)
    self._writer = writer or descriptor_files.PerImageWriter(
      self._output_dir, self._extractor.suffix
    )

    # The FOLDER_ERRNOS errno once the output folder refused a file: later images are not read.
    self._stopped = None

  def start_bundle(self):
    self._batcher = batching.ShapeBatcher(self._batch_size, 2 * self._batch_size)

  def _unwritten(self, count: int = 1) -> None:
    Metrics.counter(COUNTER_NAMESPACE, f"{UNWRITTEN_PREFIX}{self._stopped}").inc(count)

  def process(self, task):
    if self._stopped is not None:
      self._unwritten()
      return
    paths = self._extractor.output_paths(self._output_dir, task.image_id)
    if all(os.path.exists(p) for p in paths):
      self._skipped.inc()
      return
    try:
      image = image_loading.load_and_preprocess(
        task.path,
        task.box,
        self._extractor.preprocess,
        max_pixels=self._max_pixels,
        min_size=self._extractor.min_input_size,
      )
    except Exception as e:  # pylint: disable=broad-except
      yield from self._fail(task, failure_log.failure_reason(e))
      return
    for batch in self._batcher.add(batching.image_shape(image), (task, image)):
      yield from self._describe(batch)

  def finish_bundle(self):
    for batch in self._batcher.flush():
      for output in self._describe(batch):
        if isinstance(output, beam.pvalue.TaggedOutput):
          yield beam.pvalue.TaggedOutput(output.tag, _global_window_value(output.value))
        else:
          yield _global_window_value(output)

  def _describe(self, batch):
    if self._stopped is not None:
      self._unwritten(len(batch))
      return
    images = [image for _, image in batch]
    if len(batch) == 1:
      try:
        results = [self._extractor.extract(images[0])]
      except Exception as e:  # pylint: disable=broad-except
        results = [e]
    else:
      results = self._extractor.extract_batch(images)
    for (task, _), result in zip(batch, results):
      if isinstance(result, Exception):
        yield from self._fail(task, f"extraction failed: {failure_log.failure_reason(result)}")
        continue
      if self._stopped is not None:
        self._unwritten()
        continue
      try:
        self._writer.write(task.image_id, result)
      except OSError as e:
        code = output_folder.folder_errno(e)
        if code is not None:  # the folder, not this image: stop; the launcher reports it
          self._stopped = code
          self._unwritten()
          continue
        yield from self._fail(task, f"write failed: {failure_log.failure_reason(e)}")
        continue
      self._done.inc()
      yield task.image_id

  def _fail(self, task, reason: str):
    self._failed.inc()
    yield beam.pvalue.TaggedOutput(FAILURES_TAG, (task.image_id, task.path, reason))


def _global_window_value(value):
  return window.GlobalWindows.windowed_value(value)


class _CountSkipped(beam.DoFn):
  """Adds the images the plan skipped to the `skipped` counter."""

  def __init__(self):
    self._skipped = Metrics.counter(COUNTER_NAMESPACE, "skipped")

  def process(self, count):
    self._skipped.inc(count)
    return []


def write_failures(rows, config, output_dir: str, run_ids=()) -> int:
  """Merges this run's failures into `<output_dir>/failures.tsv`; returns the rows kept.

  Rows of earlier runs stay unless their image now has its files; this run's
  rows replace earlier ones of the same image, and its duplicate-id rows those
  of the ids in `run_ids` (every id this run was given). Written atomically. A file that
  cannot be written is counted (`failures_unwritten_<errno>`), not raised:
  the launcher reports it (run_pipeline).
  """
  try:
    log = failure_log.FailureLog(
      os.path.join(output_dir, failure_log.FAILURES_FILE), save_interval=1e9
    )
    present = {e.name for e in os.scandir(output_dir) if not e.name.startswith(".")}
    done = [i for i in log.image_ids() if all(n in present for n in output_names(config, i))]
    log.resolve(done)
    log.forget_collisions(run_ids)
    for image_id, path, reason in sorted(rows):
      log.add(image_id, path, reason)
    log.close()
  except OSError as e:
    code = output_folder.folder_errno(e) or 0
    Metrics.counter(COUNTER_NAMESPACE, f"{FAILURES_UNWRITTEN_PREFIX}{code}").inc()
    return 0
  return len(log)


def build_pipeline(
  root: beam.Pipeline,
  config_path: str,
  config,
  tasks,
  skipped: int,
  output_dir: str,
  batch_size: int = 1,
  max_pixels: int = images_lib.MAX_PIXELS,
  hidden=(),
  run_ids=(),
):
  """Adds the extraction of `tasks` (planned: not yet done) to `root`; see the module doc.

  `run_ids` are the ids of every task of the run (done earlier ones included),
  whose duplicate-id rows of earlier runs are decided again.
  """
  extracted = (
    root
    | "Images" >> beam.Create(list(tasks), reshuffle=False)
    | "Spread" >> beam.Reshuffle()
    | "Extract"
    >> beam.ParDo(
      ExtractDoFn(config_path, output_dir, batch_size, max_pixels, shared.Shared())
    ).with_outputs(FAILURES_TAG, main="done")
  )
  hidden_rows = [(t.image_id, t.path, task_sources.refusal_reason(t)) for t in hidden]
  failures = (
    extracted[FAILURES_TAG],
    root | "Hidden" >> beam.Create(hidden_rows),
  ) | "AllFailures" >> beam.Flatten()
  _ = (
    failures
    | "FailureList" >> beam.combiners.ToList()
    | "FailuresFile" >> beam.Map(write_failures, config, output_dir, sorted(set(run_ids)))
  )
  planned = root | "PlannedSkips" >> beam.Create([skipped])
  _ = planned | "CountSkipped" >> beam.ParDo(_CountSkipped())
  return extracted


def run_pipeline(
  config_path: str,
  tasks,
  output_dir: str,
  options=None,
  batch_size: int = 1,
  max_pixels: int = images_lib.MAX_PIXELS,
) -> dict[str, int]:
  """Plans, runs and waits for the extraction pipeline; returns its counters (+ 'seconds').

  Raises:
    ValueError: a bad config or batch size.
    output_folder.OutputError: the output folder is a file, not writable,
      or used by another extraction on this machine.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  config = config_io.load_any_config(config_path)
  start = time.monotonic()
  output_folder.prepare_output_dir(output_dir)
  with output_folder.OutputLock(output_dir):
    for path in file_utils.remove_stale_temp_files(output_dir):
      logging.info("removed a temporary file of an interrupted run: %s", path)
    todo, skipped, hidden = plan_extraction(config, tasks, output_dir)
    logging.info(
      "%d images: %d already extracted, %d to do -> %s",
      len(tasks),
      skipped,
      len(todo),
      output_dir,
    )
    root = beam.Pipeline(options=options or beam_cli.pipeline_options(["beam_extract"]))
    build_pipeline(
      root,
      config_path,
      config,
      todo,
      skipped,
      output_dir,
      batch_size,
      max_pixels,
      hidden,
      run_ids=[t.image_id for t in tasks],
    )
    result = beam_cli.run_to_the_end(root, output_dir)
    file_utils.remove_stale_temp_files(output_dir)
  values = beam_cli.counters(result, COUNTER_NAMESPACE, COUNTER_NAMES)
  values["seconds"] = time.monotonic() - start
  values["total"] = len(tasks)
  _check_stopped(values, output_dir)
  return values


def _check_stopped(values: dict[str, int], output_dir: str) -> None:
  """Raises OutputError if a worker found the folder full / read-only (module doc)."""
  unwritten = {
    int(name[len(UNWRITTEN_PREFIX) :]): count
    for name, count in values.items()
    if name.startswith(UNWRITTEN_PREFIX) and count
  }
  failures_file = [
    int(name[len(FAILURES_UNWRITTEN_PREFIX) :])
    for name, count in values.items()
    if name.startswith(FAILURES_UNWRITTEN_PREFIX) and count
  ]
  if not unwritten and not failures_file:
    return
  codes = list(unwritten) + failures_file
  reason = ", ".join(
    sorted({output_folder.FOLDER_ERRNOS.get(c, "output not writable") for c in codes})
  )
  left = sum(unwritten.values())  # every image to do is done, failed, skipped or unwritten
  message = (
    f"{output_dir}: extraction stopped ({reason}): this run wrote {values['done']}, "
    f"failed {values['failed']}, left {left} not written (the next run extracts them)"
  )
  if failures_file:
    message += f"; {failure_log.FAILURES_FILE} not written"
  raise output_folder.OutputError(message)
