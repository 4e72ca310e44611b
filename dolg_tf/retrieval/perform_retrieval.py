"""Evaluates retrieval on Revisited Oxford/Paris (or any gnd in their layout).

  python -m dolg_tf.retrieval.perform_retrieval \
      --dataset_file_path=gnd_roxford5k.pkl \
      --query_features_dir=out/query --index_features_dir=out/index \
      [--distractor_features='r1m/descriptors-*.npz'] [--qe_n=2 --dba_n=0] \
      [--superglobal_m=400 --superglobal_k=9 --superglobal_beta=0.15] \
      [--use_geometric_verification --gv_top_k=100] --output_dir=results \
      [--report_dir=report --images_dir=roxford5k/jpg]   # HTML: ranked lists, plots

Descriptors come from extract_features.py (per-image DatumProto files or bulk
shards). Queries and index images are matched to the ground truth's `qimlist`
and `imlist` by name; distractor shards (e.g. +1M) are appended to the index.
One evaluation (`evaluate`): exact global search (optional alpha-DBA and
alpha-QE) over the index and distractors, the top --num_ranked kept; with
--superglobal_m > 0 the top M of that ranking are re-ranked with SuperGlobal
(global descriptors only, superglobal.py; the search then fetches at least M);
with geometric verification the top gv_top_k of the resulting ranking (after
SuperGlobal when it is on) are re-ranked per protocol with DELG local
features (rerank.rerank_protocols; distractors have none: they count 0
inliers, see rerank.py). SuperGlobal does its own database-side augmentation
and query expansion, so it is refused together with --qe_n / --dba_n. Prints
the usual mAP and mP@k lines per protocol (before and after each re-ranking,
with SuperGlobal's cost in ms per query) and writes `metrics.json` and
`metrics.txt` to --output_dir.
"""

import dataclasses
import json
import os
import time
import typing

import numpy as np
from absl import flags, logging

from dolg_tf.data import ground_truth
from dolg_tf.io import descriptor_files, descriptor_reading
from dolg_tf.retrieval import metrics, query_expansion, rerank, superglobal
from dolg_tf.utils import cli
from dolg_tf.utils import files as file_utils
from dolg_tf.visualization import retrieval_report

GeometricVerificationConfig = rerank.GeometricVerificationConfig


@dataclasses.dataclass
class Evaluation:
  """What `evaluate` measured.

  Attributes:
    results: {'easy'|'medium'|'hard': MapResult} of the final ranking (after
      SuperGlobal and geometric verification when they are on).
    global_results: the same for the global ranking (before any re-ranking;
      `results` itself when re-ranking is off).
    summary: the printed lines.
    num_database: database size searched (index + distractors).
    superglobal_results: the same after SuperGlobal re-ranking (before
      geometric verification); None when SuperGlobal is off.
    superglobal_ms_per_query: SuperGlobal's wall time per query in ms (None
      when off).
    ranks: int [Q, K] database indices per query, best first, before
      geometric verification (after SuperGlobal when it is on).
    reranked: {protocol: int [Q, K]} after geometric verification (it
      re-ranks per protocol); None when it is off.
  """

  results: dict[str, metrics.MapResult]
  global_results: dict[str, metrics.MapResult]
  summary: str
  num_database: int
  superglobal_results: dict[str, metrics.MapResult] | None = None
  superglobal_ms_per_query: float | None = None
  ranks: np.ndarray | None = None
  reranked: dict[str, np.ndarray] | None = None


def evaluate(
  gnd_path: str,
  query_source: str,
  index_source: str,
  distractor_source: str = "",
  suffix: str = descriptor_files.DEFAULT_SUFFIX,
  qe_n: int = 0,
  dba_n: int = 0,
  alpha: float = 3.0,
  num_ranked: int = 0,
  geometric_verification: GeometricVerificationConfig | None = None,
  local_suffix: str = rerank.LOCAL_SUFFIX,
  superglobal_m: int = 0,
  superglobal_k: int = superglobal.DEFAULT_K,
  superglobal_beta: float = superglobal.DEFAULT_BETA,
) -> Evaluation:
  """Ranks the database for every query and scores the three protocols.

  Args:
    gnd_path: gnd_*.pkl or .mat ground truth.
    query_source / index_source: descriptor folders or shard globs (folders
      holding the local feature files too with geometric verification).
    distractor_source: optional extra database descriptors (shard glob or
      folder), appended after the index images.
    suffix: per-image global descriptor file suffix.
    qe_n / dba_n / alpha: alpha-QE and DBA (0 = off).
    num_ranked: keep only the top-k of each ranking (0 = the whole database).
    geometric_verification: re-rank the top `top_k` of the ranking (after
      SuperGlobal when it is on) with local features (`<name><local_suffix>`
      DelfFeatures files); None = off.
    local_suffix: local feature file suffix.
    superglobal_m / superglobal_k / superglobal_beta: SuperGlobal re-ranking
      of the top M (superglobal.superglobal_rerank; M = 0: off). The search
      fetches max(num_ranked, M) so that M candidates exist; the ranking is cut
      to num_ranked after re-ranking.

  Returns:
    An Evaluation.

  Raises:
    descriptor_reading.MissingDescriptorsError (a KeyError and a ValueError):
      query or index descriptors (or, with geometric verification, local
      feature files) missing, all counted before anything is ranked.
    FileNotFoundError: a source matching nothing (named).
    ValueError / IOError: a malformed ground truth, descriptor dimensions
      that differ between queries, index and distractors, or a truncated,
      corrupt or non-finite descriptor file (each named); SuperGlobal
      settings out of range or combined with qe_n / dba_n.
  """
  check_superglobal(superglobal_m, superglobal_k, superglobal_beta, qe_n, dba_n)
  gt = ground_truth.load_ground_truth(gnd_path)
  check_descriptors(
    gt, query_source, index_source, suffix, local_suffix if geometric_verification else None
  )
  _, queries = descriptor_reading.read_descriptors(
    query_source, ids=list(gt.qimlist), suffix=suffix
  )
  dim = queries.shape[1] if gt.num_queries else None
  # Dimensions of the other sides from one descriptor each, before the index is read.
  sides = [("index", index_source, list(gt.imlist))]
  if distractor_source:
    sides.append(("distractor", distractor_source, None))
  for what, source, ids in sides:
    other = descriptor_reading.descriptor_dim(source, ids, suffix)
    if dim is not None and other is not None and other != dim:
      raise ValueError(
        f"descriptor dimensions differ: query descriptors are {dim}-D ({query_source}), "
        f"{what} descriptors {other}-D ({source})"
      )
  _, database = descriptor_reading.read_descriptors(
    index_source, ids=list(gt.imlist), suffix=suffix
  )
  num_index = len(database)
  if distractor_source:
    _, distractors = descriptor_reading.read_descriptors(distractor_source, suffix=suffix)
    if len(distractors) and distractors.shape[1] != database.shape[1]:
      raise ValueError(
        f"descriptor dimensions differ: index descriptors are {database.shape[1]}-D "
        f"({index_source}), distractor descriptors {distractors.shape[1]}-D ({distractor_source})"
      )
    logging.info("adding %d distractors from %s", len(distractors), distractor_source)
    database = np.concatenate([database, distractors])
  k = min(num_ranked or len(database), len(database))
  # SuperGlobal re-ranks the top M: search at least M deep, cut to k afterwards.
  depth = min(max(k, superglobal_m), len(database))
  start = time.time()
  ranks, scores = query_expansion.search_with_expansion(
    queries, database, depth, qe_n=qe_n, dba_n=dba_n, alpha=alpha
  )
  logging.info(
    "ranked %d database images for %d queries in %.2fs",
    len(database),
    len(queries),
    time.time() - start,
  )
  global_results = metrics.evaluate_revisited(ranks[:, :k], gt)
  summary = metrics.format_summary(gt.dataset, global_results)
  results, lines, sg_results, sg_ms = global_results, [], None, None
  if superglobal_m:
    start = time.time()
    ranks, _ = superglobal.superglobal_rerank(
      queries, database, ranks, scores, m=superglobal_m, k=superglobal_k, beta=superglobal_beta
    )
    sg_ms = 1000.0 * (time.time() - start) / max(len(queries), 1)
    results = sg_results = metrics.evaluate_revisited(ranks[:, :k], gt)
    lines = [
      "before SuperGlobal re-ranking:",
      summary,
      f"after SuperGlobal re-ranking (M={superglobal_m}, K={superglobal_k}, "
      f"beta={superglobal_beta:g}; {sg_ms:.2f} ms/query):",
      metrics.format_summary(gt.dataset, sg_results),
    ]
    summary = "\n".join(lines)
  ranks = ranks[:, :k]
  if geometric_verification is None:
    return Evaluation(
      results, global_results, summary, len(database), sg_results, sg_ms, ranks=ranks
    )
  query_loader = rerank.local_features_loader(query_source, gt.qimlist, local_suffix, 1)
  index_features = rerank.local_features_loader(index_source, gt.imlist, local_suffix)

  def index_loader(i: int):
    # Distractors (after the index images) have no local features: 0 inliers.
    return index_features(i) if i < num_index else None

  reranked = {}
  results = rerank.rerank_protocols(
    ranks, gt, query_loader, index_loader, geometric_verification, ranks_out=reranked
  )
  config = geometric_verification
  summary = "\n".join(
    (lines or ["before geometric verification:", summary])
    + [
      f"after geometric verification (top {config.top_k}, {config.model} RANSAC):",
      metrics.format_summary(gt.dataset, results),
    ]
  )
  return Evaluation(
    results, global_results, summary, len(database), sg_results, sg_ms, ranks, reranked
  )


def check_superglobal(m: int, k: int, beta: float, qe_n: int = 0, dba_n: int = 0) -> None:
  """Refuses SuperGlobal settings out of range or combined with alpha-QE / DBA.

  SuperGlobal's two steps are a database-side augmentation and a query
  expansion of their own; stacking them on alpha-DBA / alpha-QE would refine
  already refined descriptors, so the combination is refused.

  Raises:
    ValueError: one line naming the setting.
  """
  superglobal.check_params(m, k, beta, prefix="superglobal_")
  if m and (qe_n or dba_n):
    raise ValueError(
      f"superglobal_m={m} cannot be combined with qe_n={qe_n} / dba_n={dba_n}: SuperGlobal "
      "does its own query expansion and database-side augmentation (set qe_n=0 and dba_n=0)"
    )


def check_descriptors(
  gt: ground_truth.RevisitedGroundTruth,
  query_source: str,
  index_source: str,
  suffix: str = descriptor_files.DEFAULT_SUFFIX,
  local_suffix: str | None = None,
) -> None:
  """Checks that every query and index image of `gt` has a descriptor, reading none.

  Args:
    gt: the ground truth.
    query_source / index_source: descriptor folders or shard globs.
    suffix: per-image global descriptor file suffix.
    local_suffix: if given, `<source>/<name><local_suffix>` local feature
      files are required too.

  Raises:
    descriptor_reading.MissingDescriptorsError: one line counting what is
      missing on each side, with the first few names.
    FileNotFoundError: a source matching nothing (named).
  """
  problems, missing_all = [], []
  sides = (("query", query_source, gt.qimlist), ("index", index_source, gt.imlist))
  for what, source, names in sides:
    available = set(descriptor_reading.list_ids(source, suffix))
    missing = [name for name in names if name not in available]
    if missing:
      problems.append(
        descriptor_reading.missing_message(missing, len(names), f"{what} descriptors", source)
      )
      missing_all.extend(missing)
  if local_suffix is not None:
    for what, source, names in sides:
      missing = [n for n in names if not os.path.isfile(os.path.join(source, n + local_suffix))]
      if missing:
        problems.append(
          descriptor_reading.missing_message(
            missing, len(names), f"{what} local feature files (*{local_suffix})", source
          )
        )
        missing_all.extend(missing)
  if problems:
    raise descriptor_reading.MissingDescriptorsError("; ".join(problems), missing_all)


def write_metrics(results: dict[str, metrics.MapResult], summary: str, output_dir: str) -> str:
  """Writes metrics.json (mAP and mP@k per protocol) and metrics.txt atomically.

  Returns:
    The path of metrics.json.
  """
  os.makedirs(output_dir, exist_ok=True)
  payload = {
    protocol: {
      "mAP": result.mean_ap,
      "mP@k": dict(zip(map(str, result.kappas), result.mean_precision_at_k.tolist())),
      "num_skipped_queries": result.num_skipped,
    }
    for protocol, result in results.items()
  }
  path = os.path.join(output_dir, "metrics.json")
  file_utils.atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
  file_utils.atomic_write_text(os.path.join(output_dir, "metrics.txt"), summary + "\n")
  return path


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("dataset_file_path", None, "gnd_*.pkl or .mat ground truth.")
  flags.DEFINE_string("query_features_dir", None, "Query descriptors (folder or shard glob).")
  flags.DEFINE_string("index_features_dir", None, "Index descriptors (folder or shard glob).")
  flags.DEFINE_string("distractor_features", "", "Optional distractor shards (e.g. +1M).")
  flags.DEFINE_string("suffix", descriptor_files.DEFAULT_SUFFIX, "Per-image descriptor suffix.")
  flags.DEFINE_integer("qe_n", 0, "alpha-QE neighbours (0 = off).")
  flags.DEFINE_integer("dba_n", 0, "alpha-DBA neighbours (0 = off).")
  flags.DEFINE_float("alpha", 3.0, "alpha of QE and DBA.")
  flags.DEFINE_integer(
    "superglobal_m",
    0,
    "SuperGlobal re-ranking of the top M with global descriptors (0 = off; the paper uses "
    f"{superglobal.DEFAULT_M}). Not with --qe_n / --dba_n.",
  )
  flags.DEFINE_integer(
    "superglobal_k", superglobal.DEFAULT_K, "SuperGlobal neighbours K (expansion: top K + 1)."
  )
  flags.DEFINE_float("superglobal_beta", superglobal.DEFAULT_BETA, "SuperGlobal neighbour weight.")
  flags.DEFINE_integer("num_ranked", 0, "Rank only the top-k (0 = all).")
  flags.DEFINE_string("output_dir", "", "Where metrics.json/metrics.txt go (empty: not written).")
  flags.DEFINE_string(
    "report_dir",
    "",
    "HTML report folder (ranked lists, AP and PR plots; see dolg_tf.visualization); needs "
    "--images_dir.",
  )
  cli.define_override(
    flags.DEFINE_string, "images_dir", "With --report_dir: folder of the gnd's <name>.jpg images."
  )
  flags.DEFINE_bool(
    "use_geometric_verification", False, "Re-rank the top-k with DELG local features + RANSAC."
  )
  flags.DEFINE_string("local_suffix", rerank.LOCAL_SUFFIX, "Local feature file suffix.")
  define_geometric_verification_flags()


def _flag_type(annotation):
  """int / float / str of a GeometricVerificationConfig field (`X | None` -> X)."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  return args[0] if args else annotation


def define_geometric_verification_flags(prefix: str = "gv_") -> None:
  """One `--<prefix><field>` flag per GeometricVerificationConfig field, defaulting to it."""
  define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
  for field in dataclasses.fields(GeometricVerificationConfig):
    name, help_text = prefix + field.name, field.metadata["help"]
    if field.default is None:
      help_text += " Unset: None."
    if "choices" in field.metadata:
      flags.DEFINE_enum(name, field.default, list(field.metadata["choices"]), help_text)
    else:
      define[_flag_type(field.type)](name, field.default, help_text)


def geometric_verification_from_flags(prefix: str = "gv_") -> GeometricVerificationConfig:
  """The GeometricVerificationConfig the flags give (flags only override the defaults).

  Raises:
    cli.UserError: a value out of range, naming the flag.
  """
  values = {
    f.name: FLAGS[prefix + f.name].value for f in dataclasses.fields(GeometricVerificationConfig)
  }
  try:
    return GeometricVerificationConfig(**values)
  except ValueError as e:
    raise cli.UserError(f"--{prefix}{e}") from e


def main(argv):
  del argv  # unused
  for name in ("dataset_file_path", "query_features_dir", "index_features_dir"):
    if not FLAGS[name].value:
      raise cli.UserError(f"--{name} is required")
  try:
    check_superglobal(
      FLAGS.superglobal_m, FLAGS.superglobal_k, FLAGS.superglobal_beta, FLAGS.qe_n, FLAGS.dba_n
    )
  except ValueError as e:
    raise cli.UserError(f"--{e}") from e
  geometric_verification = (
    geometric_verification_from_flags() if FLAGS.use_geometric_verification else None
  )
  if FLAGS.report_dir and not (FLAGS.images_dir and os.path.isdir(FLAGS.images_dir)):
    raise cli.UserError(f"--report_dir needs --images_dir, a folder (got {FLAGS.images_dir!r})")
  try:
    evaluation = evaluate(
      cli.resolve_path(FLAGS.dataset_file_path),
      cli.resolve_path(FLAGS.query_features_dir),
      cli.resolve_path(FLAGS.index_features_dir),
      cli.resolve_path(FLAGS.distractor_features),
      FLAGS.suffix,
      FLAGS.qe_n,
      FLAGS.dba_n,
      FLAGS.alpha,
      FLAGS.num_ranked,
      geometric_verification=geometric_verification,
      local_suffix=FLAGS.local_suffix,
      superglobal_m=FLAGS.superglobal_m,
      superglobal_k=FLAGS.superglobal_k,
      superglobal_beta=FLAGS.superglobal_beta,
    )
  except (OSError, ValueError, KeyError) as e:
    raise cli.UserError(cli.error_message(e)) from e
  print(evaluation.summary)
  if FLAGS.output_dir:
    try:
      path = write_metrics(
        evaluation.results, evaluation.summary, cli.resolve_path(FLAGS.output_dir)
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
