"""Extracts DELG local + global features of many images (resumable).

  python -m dolg_tf.extraction.extract_delg --config=protos/delg.pbtxt \
      --images_dir=photos --output_dir=out
  python -m dolg_tf.extraction.extract_delg --config=protos/delg.pbtxt \
      --list_images_path=list.txt [--images_dir=root] --output_dir=out
  python -m dolg_tf.extraction.extract_delg --config=protos/delg.pbtxt \
      --gnd_path=gnd_roxford5k.pkl --images_dir=jpg --image_set=query --query_crop \
      --output_dir=out/query

Per image, `<id><global suffix>` (DatumProto) and `<id><local suffix>`
(DelfFeatures) are written atomically (see local_extractor.py). Images whose
outputs all exist are skipped, so an interrupted run resumes. Images that
cannot be read, described or written go to `<output_dir>/failures.tsv` and the
run goes on; the exit code is 1 only if every image to do failed. Decoding runs
in `--num_threads` threads ahead of the model; progress (count, rate, ETA) is
logged every `--log_interval` seconds.
"""

import collections
import concurrent.futures
import os
import sys
import time
from collections.abc import Sequence

from absl import app, flags, logging

from dolg_tf.extraction import descriptor_store, pipeline

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("config", None, "DolgConfig text file, e.g. protos/delg.pbtxt.")
  flags.DEFINE_string("model_path", None, "Overrides the config's model_path.")
  flags.DEFINE_string("images_dir", None, "Folder of images (recursive), or the list's root.")
  flags.DEFINE_string("list_images_path", None, "Text file with one image path per line.")
  flags.DEFINE_string("gnd_path", None, "Revisited gnd file: extract its qimlist or imlist.")
  flags.DEFINE_enum("image_set", "query", ["query", "index"], "With --gnd_path: which list.")
  flags.DEFINE_bool("query_crop", False, "With --gnd_path and queries: crop to their bbx.")
  flags.DEFINE_string("image_extension", ".jpg", "With --gnd_path: image file extension.")
  flags.DEFINE_string("output_dir", None, "Folder for the feature files (created if needed).")
  flags.DEFINE_integer("num_threads", 2, "Image decoding threads.")
  flags.DEFINE_integer("prefetch", 4, "Images decoded ahead of the model.")
  flags.DEFINE_float("log_interval", 30.0, "Seconds between progress logs.")


def _reason(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


def run_delg_extraction(
  extractor,
  tasks: Sequence[pipeline.ImageTask],
  output_dir: str,
  num_threads: int = 2,
  prefetch: int = 4,
  log_interval: float = 30.0,
) -> pipeline.ExtractionSummary:
  """Extracts and writes every task's features; see the module doc.

  Args:
    extractor: a local_extractor.LocalGlobalExtractor (or anything with
      `load_and_preprocess`, `extract`, `output_paths` and `write_outputs`).
    tasks: the images (unique ids).
    output_dir: created if needed.
    num_threads / prefetch: decoding threads / images decoded ahead.
    log_interval: seconds between progress logs.

  Returns:
    A pipeline.ExtractionSummary.
  """
  start = time.monotonic()
  os.makedirs(output_dir, exist_ok=True)
  for path in descriptor_store.remove_stale_temp_files(output_dir):
    logging.info("removed a temporary file of an interrupted run: %s", path)
  todo = [
    t
    for t in tasks
    if not all(os.path.exists(p) for p in extractor.output_paths(output_dir, t.image_id))
  ]
  summary = pipeline.ExtractionSummary(total=len(tasks), skipped=len(tasks) - len(todo))
  failures = pipeline.FailureLog(os.path.join(output_dir, pipeline.FAILURES_FILE))
  logging.info(
    "%d images: %d already extracted, %d to do -> %s",
    len(tasks),
    summary.skipped,
    len(todo),
    output_dir,
  )

  def fail(task, reason):
    failures.add(task.image_id, task.path, reason)
    summary.failed += 1
    summary.failures.append((task.image_id, task.path, reason))

  last_log = start
  executor = concurrent.futures.ThreadPoolExecutor(max(1, num_threads))
  in_flight = collections.deque()
  pending = iter(todo)

  def refill():
    while len(in_flight) < max(1, prefetch):
      task = next(pending, None)
      if task is None:
        return
      in_flight.append((task, executor.submit(extractor.load_and_preprocess, task.path, task.box)))

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
        result = extractor.extract(image)
      except Exception as e:  # pylint: disable=broad-except
        fail(task, f"extraction failed: {_reason(e)}")
        continue
      try:
        extractor.write_outputs(output_dir, task.image_id, result)
        summary.done += 1
      except Exception as e:  # pylint: disable=broad-except
        fail(task, f"write failed: {_reason(e)}")
      now = time.monotonic()
      if now - last_log >= log_interval:
        last_log = now
        processed = summary.done + summary.failed
        rate = processed / max(now - start, 1e-9)
        eta = pipeline.format_duration((len(todo) - processed) / rate) if rate else "?"
        logging.info(
          "extracted %d/%d (failed %d), %.2f img/s, ETA %s",
          summary.done,
          len(todo),
          summary.failed,
          rate,
          eta,
        )
  finally:
    for _, future in in_flight:
      future.cancel()
    executor.shutdown(wait=True)
  summary.seconds = time.monotonic() - start
  logging.info(
    "finished in %.1fs: %d written, %d skipped, %d failed%s",
    summary.seconds,
    summary.done,
    summary.skipped,
    summary.failed,
    f" (see {failures.path})" if summary.failed else "",
  )
  return summary


class _SetupError(Exception):
  """A bad flag or input, reported as one line."""


def _tasks() -> list[pipeline.ImageTask]:
  if FLAGS.gnd_path:
    from dolg_tf.retrieval import ground_truth  # pylint: disable=g-import-not-at-top

    if FLAGS.list_images_path or not FLAGS.images_dir:
      raise _SetupError("--gnd_path needs --images_dir and excludes --list_images_path")
    gnd = ground_truth.load_ground_truth(FLAGS.gnd_path)
    names = gnd.qimlist if FLAGS.image_set == "query" else gnd.imlist
    paths = [os.path.join(FLAGS.images_dir, n + FLAGS.image_extension) for n in names]
    boxes = None
    if FLAGS.image_set == "query" and FLAGS.query_crop:
      boxes = {n: q["bbx"] for n, q in zip(names, gnd.gnd) if q["bbx"] is not None}
    return pipeline.tasks_from_paths(paths, boxes)
  if FLAGS.query_crop:
    raise _SetupError("--query_crop needs --gnd_path")
  if FLAGS.list_images_path:
    if not os.path.isfile(FLAGS.list_images_path):
      raise _SetupError(f"{FLAGS.list_images_path}: image list not found")
    return pipeline.tasks_from_paths(
      pipeline.read_image_list(FLAGS.list_images_path, FLAGS.images_dir)
    )
  if FLAGS.images_dir:
    return pipeline.tasks_from_paths(pipeline.list_images(FLAGS.images_dir))
  raise _SetupError("give --images_dir, --list_images_path or --gnd_path")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if os.environ.get("BUILD_WORKING_DIRECTORY"):
    os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])
  try:
    if not FLAGS.config or not FLAGS.output_dir:
      raise _SetupError("--config and --output_dir are required")
    if not os.path.isfile(FLAGS.config):
      raise _SetupError(f"{FLAGS.config}: config file not found")
    from dolg_tf.io import config_io  # pylint: disable=g-import-not-at-top

    config = config_io.load_dolg_config(FLAGS.config)
    tasks = _tasks()
    from dolg_tf.extraction import local_extractor  # pylint: disable=g-import-not-at-top

    extractor = local_extractor.LocalGlobalExtractor(
      config, FLAGS.config, model_path=FLAGS.model_path
    )
  except (_SetupError, OSError, ValueError) as e:
    print(f"extract_delg: error: {e}", file=sys.stderr)
    return 2
  summary = run_delg_extraction(
    extractor, tasks, FLAGS.output_dir, FLAGS.num_threads, FLAGS.prefetch, FLAGS.log_interval
  )
  print(
    f"done {summary.done}, skipped {summary.skipped}, failed {summary.failed}, "
    f"{summary.seconds:.1f}s -> {FLAGS.output_dir}"
  )
  return summary.exit_code


if __name__ == "__main__":
  define_flags()
  app.run(main)
