"""Evaluates retrieval on Revisited Oxford/Paris (or any gnd in their layout).

  python -m dolg_tf.retrieval.perform_retrieval \
      --dataset_file_path=gnd_roxford5k.pkl \
      --query_features_dir=out/query --index_features_dir=out/index \
      [--distractor_features='r1m/descriptors-*.npz'] [--qe_n=2 --dba_n=0] \
      --output_dir=results

Descriptors come from extract_features.py (per-image DatumProto files or bulk
shards). Queries and index images are matched to the ground truth's `qimlist`
and `imlist` by name; distractor shards (e.g. +1M) are appended to the index.
Prints the usual mAP and mP@k lines per protocol and writes `metrics.json`
and `metrics.txt` to --output_dir.
"""

import json
import os
import time

import numpy as np
from absl import flags, logging

from dolg_tf.extraction import descriptor_store
from dolg_tf.retrieval import ground_truth, metrics, rerank, search
from dolg_tf.utils import cli


def evaluate(
  gnd_path: str,
  query_source: str,
  index_source: str,
  distractor_source: str = "",
  suffix: str = descriptor_store.DEFAULT_SUFFIX,
  qe_n: int = 0,
  dba_n: int = 0,
  alpha: float = 3.0,
  num_ranked: int = 0,
) -> tuple[dict[str, metrics.MapResult], str]:
  """Ranks the index for every query and scores the three protocols.

  Args:
    gnd_path: gnd_*.pkl or .mat ground truth.
    query_source / index_source: descriptor folders or shard globs.
    distractor_source: optional extra database descriptors (shard glob).
    suffix: per-image descriptor file suffix.
    qe_n / dba_n / alpha: alpha-QE and DBA (0 = off).
    num_ranked: rank only the top-k (0 = the whole database).

  Returns:
    ({'easy'|'medium'|'hard': MapResult}, the printed summary).
  """
  gt = ground_truth.load_ground_truth(gnd_path)
  _, queries = descriptor_store.read_descriptors(query_source, ids=list(gt.qimlist), suffix=suffix)
  _, database = descriptor_store.read_descriptors(index_source, ids=list(gt.imlist), suffix=suffix)
  if distractor_source:
    _, distractors = descriptor_store.read_descriptors(distractor_source, suffix=suffix)
    logging.info("adding %d distractors from %s", len(distractors), distractor_source)
    database = np.concatenate([database, distractors])
  k = min(num_ranked or len(database), len(database))
  start = time.time()
  ranks, _ = search.search_with_expansion(queries, database, k, qe_n=qe_n, dba_n=dba_n, alpha=alpha)
  logging.info(
    "ranked %d database images for %d queries in %.2fs",
    len(database),
    len(queries),
    time.time() - start,
  )
  results = metrics.evaluate_revisited(ranks, gt)
  return results, metrics.format_summary(gt.dataset, results)


def write_metrics(results: dict[str, metrics.MapResult], summary: str, output_dir: str) -> str:
  """Writes metrics.json (mAP and mP@k per protocol) and metrics.txt; returns the json path."""
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
  for target, text in ((path, json.dumps(payload, indent=2)), (path[:-4] + "txt", summary)):
    with open(target + ".tmp", "w") as f:
      f.write(text + "\n")
    os.replace(target + ".tmp", target)
  return path


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("dataset_file_path", None, "gnd_*.pkl or .mat ground truth.")
  flags.DEFINE_string("query_features_dir", None, "Query descriptors (folder or shard glob).")
  flags.DEFINE_string("index_features_dir", None, "Index descriptors (folder or shard glob).")
  flags.DEFINE_string("distractor_features", "", "Optional distractor shards (e.g. +1M).")
  flags.DEFINE_string("suffix", descriptor_store.DEFAULT_SUFFIX, "Per-image descriptor suffix.")
  flags.DEFINE_integer("qe_n", 0, "alpha-QE neighbours (0 = off).")
  flags.DEFINE_integer("dba_n", 0, "alpha-DBA neighbours (0 = off).")
  flags.DEFINE_float("alpha", 3.0, "alpha of QE and DBA.")
  flags.DEFINE_integer("num_ranked", 0, "Rank only the top-k (0 = all).")
  flags.DEFINE_string("output_dir", "", "Where metrics.json/metrics.txt go (empty: not written).")
  flags.DEFINE_bool(
    "use_geometric_verification", False, "Re-rank the top-k with DELG local features + RANSAC."
  )
  flags.DEFINE_string("local_suffix", ".delg_local", "Local feature file suffix (DelfFeatures).")
  flags.DEFINE_integer("gv_top_k", 100, "Images re-ranked per query.")
  flags.DEFINE_float("gv_residual_threshold", 20.0, "RANSAC residual threshold (pixels).")
  flags.DEFINE_float(
    "gv_distance_threshold", None, "Descriptor match threshold (default 0.8 L2 / Hamming)."
  )
  flags.DEFINE_float(
    "gv_max_scale_change",
    None,
    "Reject RANSAC fits that scale any direction by more than this (e.g. 3; default: no check).",
  )
  flags.DEFINE_float(
    "gv_max_anisotropy",
    None,
    "Reject RANSAC fits whose singular-value ratio exceeds this (e.g. 2; default: no check).",
  )


def main(argv):
  del argv  # unused
  for name in ("dataset_file_path", "query_features_dir", "index_features_dir"):
    if not FLAGS[name].value:
      raise cli.UserError(f"--{name} is required")
  if FLAGS.use_geometric_verification:
    _, results, summary = rerank.evaluate_with_geometric_verification(
      cli.resolve_path(FLAGS.dataset_file_path),
      cli.resolve_path(FLAGS.query_features_dir),
      cli.resolve_path(FLAGS.index_features_dir),
      global_suffix=FLAGS.suffix,
      local_suffix=FLAGS.local_suffix,
      top_k=FLAGS.gv_top_k,
      distance_threshold=FLAGS.gv_distance_threshold,
      residual_threshold=FLAGS.gv_residual_threshold,
      max_scale_change=FLAGS.gv_max_scale_change,
      max_anisotropy=FLAGS.gv_max_anisotropy,
      qe_n=FLAGS.qe_n,
      dba_n=FLAGS.dba_n,
      alpha=FLAGS.alpha,
    )
    print(summary)
    if FLAGS.output_dir:
      print(f"metrics: {write_metrics(results, summary, cli.resolve_path(FLAGS.output_dir))}")
    return
  results, summary = evaluate(
    cli.resolve_path(FLAGS.dataset_file_path),
    cli.resolve_path(FLAGS.query_features_dir),
    cli.resolve_path(FLAGS.index_features_dir),
    cli.resolve_path(FLAGS.distractor_features),
    FLAGS.suffix,
    FLAGS.qe_n,
    FLAGS.dba_n,
    FLAGS.alpha,
    FLAGS.num_ranked,
  )
  print(summary)
  if FLAGS.output_dir:
    print(f"metrics: {write_metrics(results, summary, cli.resolve_path(FLAGS.output_dir))}")


def run():
  """The `dolg-retrieve` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
