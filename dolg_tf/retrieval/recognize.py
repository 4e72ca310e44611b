r"""Landmark recognition (GLDv2 / Kaggle): kNN voting over global descriptors, GAP.

  dolg-recognize --database_descriptors=train_desc --database_labels=train.csv \
      --query_descriptors=test_desc --output_path=submission.csv \
      [--solution_path=solution.csv] [--k=5 --voting=sum] [--min_score=0.5] \
      [--index_dir=index] \
      [--use_geometric_verification --query_local_dir=test_desc \
       --database_local_dir=train_desc --gv_top_k=100]
  dolg-recognize --solution_path=solution.csv --submission_path=submission.csv

Every test image of --query_descriptors gets one landmark id and a confidence
by k-nearest-neighbour voting among the database images
(dolg_tf/retrieval/recognition.py: sum or max of the neighbours' cosine
similarities per landmark; optional DELG re-ranking, where the RANSAC inlier
counts become the votes; optional --min_score below which no landmark is
predicted). Descriptors: a folder of per-image files or Beam/extraction
shards; labels: GLDv2 train.csv, train_clean.csv or an id,landmark_id CSV.
--output_path gets a Kaggle submission CSV (id,landmarks "<id> <score>").
With --solution_path (Kaggle's id,landmarks,Usage) it prints GAP (DELF's
micro AP, also without the non-landmark images), top-1 accuracy and the
retrieval mAP@100 of the neighbour lists, for Public and Private separately.
With --submission_path instead of descriptors it scores that file (DELF's
compute_recognition_metrics; mAP@100 is then not available).

Flags: the inputs above, plus one per RecognitionConfig field (--k, --voting,
--min_score, --suffix, --local_suffix, --use_geometric_verification, --gv_*).
"""

import dataclasses
import os

from absl import flags, logging

from dolg_tf.retrieval import recognition, recognition_metrics
from dolg_tf.utils import cli

FLAGS = flags.FLAGS
INPUT_FLAGS = (
  ("database_descriptors", "Database descriptors: folder or shard glob."),
  ("database_labels", "train.csv, train_clean.csv or an id,landmark_id CSV."),
  ("query_descriptors", "Test image descriptors: folder or shard glob."),
  ("index_dir", "Optional saved search index of the database descriptors (their order)."),
  ("query_local_dir", "Test images' local features (with --use_geometric_verification)."),
  ("database_local_dir", "Database local features (with --use_geometric_verification)."),
  ("solution_path", "Optional Kaggle solution CSV (id,landmarks[,Usage]): print the metrics."),
  ("output_path", "Submission CSV written (id,landmarks)."),
  ("submission_path", "Score this submission CSV against --solution_path (no search)."),
)
GV_PREFIX = "gv_"


def define_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, str]:
  """Defines the command's flags (a second call is a no-op); returns the config flags."""
  if "database_descriptors" not in flag_values:
    for name, help_text in INPUT_FLAGS:
      flags.DEFINE_string(name, "", help_text, flag_values=flag_values)
  config = recognition.RecognitionConfig()
  mapping = cli.define_config_flags(
    config, skip=("geometric_verification",), flag_values=flag_values
  )
  mapping.update(
    cli.define_config_flags(
      config, ["geometric_verification"], flag_values=flag_values, flag_prefix=GV_PREFIX
    )
  )
  return mapping


def config_from_flags(
  mapping: dict[str, str], flag_values: flags.FlagValues = FLAGS
) -> recognition.RecognitionConfig:
  """The RecognitionConfig the given flags make (cli.UserError naming a bad one)."""
  overrides = cli.given_overrides(mapping, flag_values)
  config = recognition.RecognitionConfig()
  try:
    gv = dataclasses.replace(
      config.geometric_verification, **overrides.pop("geometric_verification", {})
    )
  except ValueError as e:
    raise cli.UserError(f"--{GV_PREFIX}{e}") from e
  try:
    return dataclasses.replace(config, geometric_verification=gv, **overrides)
  except ValueError as e:
    raise cli.UserError(f"--{e}") from e


def _read_solution() -> recognition_metrics.Solution | None:
  if not FLAGS.solution_path:
    return None
  try:
    return recognition_metrics.read_solution(cli.resolve_path(FLAGS.solution_path))
  except (OSError, ValueError) as e:
    raise cli.UserError(cli.error_message(e)) from e


def score_submission(solution: recognition_metrics.Solution) -> None:
  """Prints the metrics of --submission_path (DELF's compute_recognition_metrics)."""
  try:
    public, private = recognition_metrics.read_predictions(
      cli.resolve_path(FLAGS.submission_path), solution
    )
  except (OSError, ValueError) as e:
    raise cli.UserError(cli.error_message(e)) from e
  predictions = {**public, **private}
  for name, subset in solution.subsets().items():
    print(recognition_metrics.evaluate_subset(predictions, subset).format(name))


def main(argv):
  del argv  # unused
  config = config_from_flags(define_flags(FLAGS), FLAGS)
  solution = _read_solution()
  if FLAGS.submission_path:
    if solution is None:
      raise cli.UserError("--submission_path needs --solution_path")
    score_submission(solution)
    return
  for name in ("database_descriptors", "database_labels", "query_descriptors"):
    if not FLAGS[name].value:
      raise cli.UserError(f"--{name} is required")
  if not FLAGS.output_path and solution is None:
    raise cli.UserError("give --output_path (a submission CSV) or --solution_path (metrics)")
  if FLAGS.output_path and not os.path.isdir(os.path.dirname(cli.resolve_path(FLAGS.output_path))):
    raise cli.UserError(f"--output_path: folder of {FLAGS.output_path} does not exist")
  inputs = recognition.RecognitionInputs(
    **{
      name: cli.resolve_path(FLAGS[name].value) or ""
      for name in (
        "database_descriptors",
        "database_labels",
        "query_descriptors",
        "index_dir",
        "query_local_dir",
        "database_local_dir",
      )
    }
  )
  depth = recognition.MAP_DEPTH if solution is not None else 0
  try:
    result = recognition.recognize(inputs, config, map_depth=depth)
  except (OSError, ValueError, KeyError) as e:
    raise cli.UserError(cli.error_message(e)) from e
  predicted = sum(1 for p in result.predictions.values() if p is not None)
  print(f"{len(result.query_ids)} test images, {predicted} with a predicted landmark")
  if FLAGS.output_path:
    try:
      recognition_metrics.write_submission(cli.resolve_path(FLAGS.output_path), result.predictions)
    except OSError as e:
      raise cli.UserError(f"--output_path: {cli.error_message(e)}") from e
    print(f"submission: {FLAGS.output_path}")
  if solution is not None:
    missing = recognition.missing_from_queries(result, solution)
    if missing:
      logging.warning("%d scored test images have no descriptor (no prediction)", len(missing))
    print(recognition.summary(recognition.evaluate(result, solution)))


def run():
  """The `dolg-recognize` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
