r"""Evaluates retrieval on Revisited Oxford/Paris (or any gnd in their layout).

  python -m dolg_tf.retrieval.perform_retrieval \
      --dataset_file_path=gnd_roxford5k.pkl \
      --query_features_dir=out/query --index_features_dir=out/index \
      [--distractor_features='r1m/descriptors-*.npz'] [--qe_n=2 --dba_n=0] \
      [--superglobal_m=400 --superglobal_k=9 --superglobal_beta=0.15] \
      [--use_geometric_verification --gv_top_k=100] --output_dir=results \
      [--asmk_mode=rerank --asmk_aggregation_config=index_aggregation.pbtxt \
       --asmk_index_dir=agg/index --asmk_query_dir=agg/query --asmk_depth=100] \
      [--report_dir=report --images_dir=roxford5k/jpg]   # HTML: ranked lists, plots

Descriptors come from extract_features.py (per-image DatumProto files or bulk
shards). Queries and index images are matched to the ground truth's `qimlist`
and `imlist` by name; distractor shards (e.g. +1M) are appended to the index.
One evaluation (evaluation.evaluate, settings in one retrieval_config.RetrievalConfig):
exact global search (optional alpha-DBA and alpha-QE) over the index and
distractors, the top --num_ranked kept; with --superglobal_m > 0 the top M of
that ranking are re-ranked with SuperGlobal (global descriptors only,
superglobal.py; the search then fetches at least M); with geometric
verification the top gv_top_k of the resulting ranking (after SuperGlobal
when it is on) are re-ranked per protocol with DELG local features
(rerank.rerank_protocols; distractors have none: they count 0 inliers, see
rerank.py). SuperGlobal does its own database-side augmentation and query
expansion, so it is refused together with --qe_n / --dba_n. With
--asmk_mode=alone the index is ranked by aggregated local features (ASMK /
ASMK* / VLAD, DELF's files from dolg-aggregate) through an inverted file
instead of the global search; with --asmk_mode=rerank the global top
--asmk_depth are re-sorted by them (asmk_rerank.py: score = ASMK +
--asmk_global_weight x global); geometric verification then applies to that
ranking, and a last line gives each stage's ms per query. Prints the usual
mAP and mP@k lines per protocol (before and after each re-ranking, with
SuperGlobal's cost in ms per query) and writes `metrics.json` and
`metrics.txt` to --output_dir.

Flags: the inputs and outputs below, plus one flag per RetrievalConfig field
(--suffix, --local_suffix, --num_ranked, --qe_n, --dba_n, --alpha,
--superglobal_m/k/beta, --use_geometric_verification, --gv_*, --asmk_*), generated from
it (retrieval_config.define_flags); they only override its defaults.
"""

import dataclasses
import os

from absl import flags

from dolg_tf.data import ground_truth
from dolg_tf.retrieval import evaluation as evaluation_lib
from dolg_tf.retrieval import retrieval_config
from dolg_tf.utils import cli
from dolg_tf.visualization import retrieval_report

FLAGS = flags.FLAGS
REQUIRED_FLAGS = ("dataset_file_path", "query_features_dir", "index_features_dir")
ASMK_PATH_FIELDS = ("aggregation_config", "query_dir", "index_dir")


def define_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, str]:
  """Defines the command's flags (a second call is a no-op).

  Returns:
    The RetrievalConfig field flags, {flag name: field path}.
  """
  if "dataset_file_path" not in flag_values:
    for name, default, help_text in (
      ("dataset_file_path", None, "gnd_*.pkl or .mat ground truth."),
      ("query_features_dir", None, "Query descriptors (folder or shard glob)."),
      ("index_features_dir", None, "Index descriptors (folder or shard glob)."),
      ("distractor_features", "", "Optional distractor shards (e.g. +1M)."),
      ("output_dir", "", "Where metrics.json/metrics.txt go (empty: not written)."),
      (
        "report_dir",
        "",
        "HTML report folder (ranked lists, AP and PR plots; dolg_tf.visualization); "
        "needs --images_dir.",
      ),
      ("images_dir", "", "With --report_dir: folder of the gnd's <name>.jpg images."),
    ):
      flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
  return retrieval_config.define_flags(flag_values=flag_values)


def main(argv):
  del argv  # unused
  for name in REQUIRED_FLAGS:
    if not FLAGS[name].value:
      raise cli.UserError(f"--{name} is required")
  config = retrieval_config.from_flags(define_flags(FLAGS), FLAGS)
  asmk = config.asmk
  paths = {name: cli.resolve_path(getattr(asmk, name)) for name in ASMK_PATH_FIELDS}
  config = dataclasses.replace(config, asmk=dataclasses.replace(asmk, **paths))
  if FLAGS.report_dir and not (FLAGS.images_dir and os.path.isdir(FLAGS.images_dir)):
    raise cli.UserError(f"--report_dir needs --images_dir, a folder (got {FLAGS.images_dir!r})")
  try:
    evaluation = evaluation_lib.evaluate(
      cli.resolve_path(FLAGS.dataset_file_path),
      cli.resolve_path(FLAGS.query_features_dir),
      cli.resolve_path(FLAGS.index_features_dir),
      cli.resolve_path(FLAGS.distractor_features),
      config,
    )
  except (OSError, ValueError, KeyError) as e:
    raise cli.UserError(cli.error_message(e)) from e
  print(evaluation.summary)
  if FLAGS.output_dir:
    try:
      path = evaluation_lib.write_metrics(
        evaluation.results,
        evaluation.summary,
        cli.resolve_path(FLAGS.output_dir),
        evaluation.stage_ms if config.asmk.mode != "off" else None,
      )
    except OSError as e:
      raise cli.UserError(f"--output_dir: {cli.error_message(e)}") from e
    print(f"metrics: {path}")
  if FLAGS.report_dir:
    try:
      path = retrieval_report.write_evaluation_report(
        cli.resolve_path(FLAGS.report_dir),
        ground_truth.load_ground_truth(cli.resolve_path(FLAGS.dataset_file_path)),
        evaluation,
        cli.resolve_path(FLAGS.images_dir),
      )
    except (OSError, ValueError) as e:
      raise cli.UserError(cli.error_message(e)) from e
    print(f"report: {path}")


def run():
  """The `dolg-retrieve` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
