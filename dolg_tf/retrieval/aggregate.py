r"""Aggregates local features into VLAD / ASMK / ASMK* (R-*) files, as DELF's extract_aggregation.

  dolg-aggregate --aggregation_config=codebook/aggregation_config.pbtxt \
      --features_dir=out/index [--image_list=index_list.txt] \
      [--local_suffix=.delg_local] --output_dir=out/index_asmk_star
  # regional (R-ASMK*, DELF's index_aggregation_config.pbtxt): one .delf file per box
  dolg-aggregate --aggregation_config=index.pbtxt --features_dir=boxes \
      --image_list=index_list.txt --mapping_path=index_mapping.csv --output_dir=...

--aggregation_config is DELF's AggregationConfig in text format
(io/aggregation_config_io.py; its codebook_path is found next to the config
file first). For each image `<name>` of --image_list (or every
`<name><local_suffix>` file of --features_dir), the DelfFeatures file
`<features_dir>/<name><local_suffix>` is aggregated (aggregation.py) and
written to `<output_dir>/<name><ext>` in DELF's format, ext by type:
.vlad / .asmk / .asmk_star, or .rvlad / .rasmk / .rasmk_star when regional.
Regional aggregation reads, as DELF does, --mapping_path: a CSV with columns
`name` (a box's feature file, without suffix) and `index_image_id` (the row
of --image_list), the regions of an image being its box files in CSV order.

Resumable: an output that reads back as a valid aggregation of this config
is skipped (an invalid one is done again). Outputs are written atomically.
An image that fails (missing or corrupt feature file, wrong dimension) is
recorded in `<output_dir>/failures.tsv` (extraction/failure_log.py) and the
run goes on; a later success removes its row. Progress lines give the count,
the rate and the ETA. Exit status 1 only if every image failed. One run at a
time per --output_dir (a lock file; a second run is refused with one line).
"""

import csv
import io
import os
import time

import numpy as np
from absl import flags

from dolg_tf.extraction import failure_log as failure_lib
from dolg_tf.io import aggregation_config_io
from dolg_tf.retrieval import aggregation
from dolg_tf.retrieval import codebook as codebook_lib
from dolg_tf.utils import cli, dir_lock
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import progress as progress_lib

FLAGS = flags.FLAGS
DEFAULT_LOCAL_SUFFIX = ".delg_local"
LOCK_FILE = ".dolg_aggregate.lock"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags (a second call is a no-op)."""
  if "aggregation_config" in flag_values:
    return
  for name, default, help_text in (
    ("aggregation_config", None, "DELF AggregationConfig text file (.pbtxt)."),
    ("features_dir", None, "Folder of the local feature files."),
    ("local_suffix", DEFAULT_LOCAL_SUFFIX, "Local feature file suffix (.delg_local, .delf)."),
    ("image_list", "", "Optional text file of image names, one per line."),
    ("mapping_path", "", "Regional only: DELF's box mapping CSV (name, index_image_id)."),
    ("output_dir", None, "Where the aggregated files are written."),
  ):
    flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
  flags.DEFINE_float(
    "log_interval", 30.0, "Seconds between progress lines.", flag_values=flag_values
  )


def read_mapping(path: str, names: list[str]) -> dict[str, list[str]]:
  """DELF's box mapping CSV: image name -> its box feature file names, in CSV order.

  Raises:
    ValueError: naming the file and line, on a missing column or a bad id.
  """
  text = file_utils.read_bytes(path).decode("utf-8")
  reader = csv.DictReader(io.StringIO(text))
  if not {"name", "index_image_id"} <= set(reader.fieldnames or []):
    raise ValueError(f"{path}: needs columns name and index_image_id, got {reader.fieldnames}")
  boxes: dict[str, list[str]] = {}
  for line, row in enumerate(reader, 2):
    try:
      image = names[int(row["index_image_id"])]
    except (ValueError, IndexError, TypeError) as e:
      raise ValueError(
        f"{path}:{line}: index_image_id {row['index_image_id']!r} is not a row of "
        f"--image_list ({len(names)} names)"
      ) from e
    boxes.setdefault(image, []).append(row["name"])
  return boxes


def _image_names(features_dir: str, suffix: str) -> list[str]:
  if FLAGS.image_list:
    return codebook_lib.read_image_names(cli.resolve_path(FLAGS.image_list))
  if not os.path.isdir(features_dir):
    raise FileNotFoundError(f"{features_dir}: local features folder not found")
  return sorted(
    e[: -len(suffix)] for e in os.listdir(features_dir) if e.endswith(suffix) and e[0] != "."
  )


def _load_inputs(aggregator, features_dir, suffix, name, boxes):
  """(descriptors, num_features_per_region or None, the file read first) of image `name`."""
  if boxes is None:
    path = os.path.join(features_dir, name + suffix)
    return codebook_lib.read_local_descriptors(path), None, path
  if name not in boxes:
    raise ValueError(f"{name}: no boxes in --mapping_path")
  parts, counts = [], []
  for box in boxes[name]:
    rows = codebook_lib.read_local_descriptors(os.path.join(features_dir, box + suffix))
    rows = rows.reshape(len(rows), -1) if len(rows) else np.zeros([0, aggregator.dim], np.float32)
    parts.append(rows)
    counts.append(len(rows))
  path = os.path.join(features_dir, boxes[name][0] + suffix)
  return np.concatenate(parts), counts, path


def _setup():
  for name in ("aggregation_config", "features_dir", "output_dir"):
    if not FLAGS[name].value:
      raise cli.UserError(f"--{name} is required")
  config_path = cli.resolve_path(FLAGS.aggregation_config)
  features_dir = cli.resolve_path(FLAGS.features_dir)
  try:
    config = aggregation_config_io.load_config(config_path)
    if config.use_regional_aggregation and not (FLAGS.mapping_path and FLAGS.image_list):
      raise ValueError(
        f"{config_path}: use_regional_aggregation needs --mapping_path and --image_list"
      )
    names = _image_names(features_dir, FLAGS.local_suffix)
    boxes = None
    if config.use_regional_aggregation:
      boxes = read_mapping(cli.resolve_path(FLAGS.mapping_path), names)
    aggregator = aggregation.from_config(config, config_path)
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise cli.UserError(cli.error_message(e)) from e
  return config, aggregator, features_dir, names, boxes


def _open_output(output_dir: str):
  """(lock, failure log) of `output_dir`: one dolg-aggregate per folder, stale temp files gone."""
  try:
    os.makedirs(output_dir, exist_ok=True)
    lock = dir_lock.DirLock(os.path.join(output_dir, LOCK_FILE)).acquire()
  except dir_lock.LockBusyError as e:
    raise cli.UserError(f"--output_dir: {e} (another dolg-aggregate writes there)") from e
  except OSError as e:
    raise cli.UserError(f"--output_dir: {cli.error_message(e)}") from e
  try:
    file_utils.remove_stale_temp_files(output_dir)
    failures = failure_lib.FailureLog(os.path.join(output_dir, failure_lib.FAILURES_FILE))
  except (OSError, failure_lib.output_folder.OutputError) as e:
    lock.release()
    raise cli.UserError(f"--output_dir: {cli.error_message(e)}") from e
  return lock, failures


def _aggregate_all(config, aggregator, features_dir, names, boxes, output_dir, failures):
  """Aggregates every image not already done; returns (done, skipped, failed)."""
  extension = aggregation.output_extension(config)
  done = skipped = failed = 0
  progress = progress_lib.Progress(
    len(names), verb="aggregated", unit="img", interval=FLAGS.log_interval
  )
  for name in names:
    out_path = os.path.join(output_dir, name + extension)
    if aggregation.aggregated_file_problem(out_path, config) is None:
      skipped += 1
      failures.resolve([name])
      continue
    path = os.path.join(features_dir, name + FLAGS.local_suffix)
    try:
      descriptors, regions, path = _load_inputs(
        aggregator, features_dir, FLAGS.local_suffix, name, boxes
      )
      aggregated, words = aggregator.aggregate(descriptors, regions)
      os.makedirs(os.path.dirname(out_path), exist_ok=True)
      aggregation.write_aggregated(out_path, aggregated, words)
    except (OSError, ValueError) as e:
      failed += 1
      failures.add(name, path, failure_lib.failure_reason(e))
    else:
      done += 1
      failures.resolve([name])
    progress.update(done, processed=done + failed, failed=failed, skipped=skipped)
  progress.update(done, processed=done + failed, failed=failed, skipped=skipped, force=True)
  return done, skipped, failed


def main(argv):
  del argv  # unused
  config, aggregator, features_dir, names, boxes = _setup()
  output_dir = cli.resolve_path(FLAGS.output_dir)
  lock, failures = _open_output(output_dir)
  start = time.monotonic()
  try:
    done, skipped, failed = _aggregate_all(
      config, aggregator, features_dir, names, boxes, output_dir, failures
    )
    failures.close()
  except failure_lib.output_folder.OutputError as e:
    raise cli.UserError(str(e)) from e
  finally:
    file_utils.remove_own_temp_files(output_dir)
    lock.release()
  seconds = time.monotonic() - start
  rate = done / seconds if seconds > 0 else 0.0
  print(
    f"done {done}, skipped {skipped}, failed {failed}, {seconds:.1f}s ({rate:.1f} img/s) "
    f"-> {output_dir} (*{aggregation.output_extension(config)})"
  )
  if failed:
    print(f"failures: {failures.path}")
  return 1 if failed and done + skipped == 0 else 0


def run():
  """The `dolg-aggregate` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
