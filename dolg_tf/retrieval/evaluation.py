"""One retrieval evaluation on Revisited Oxford/Paris (or any gnd in their layout).

`evaluate` (settings in one retrieval_config.RetrievalConfig): queries and index
images are matched to the ground truth's `qimlist` and `imlist` by name;
distractor shards (e.g. +1M) are appended to the index. Exact global search
(optional alpha-DBA and alpha-QE) over the index and distractors, the top
num_ranked kept; with superglobal.m > 0 the top M of that ranking are re-ranked
with SuperGlobal (global descriptors only, superglobal.py; the search then
fetches at least M); with geometric verification the top gv top_k of the
resulting ranking (after SuperGlobal when it is on) are re-ranked per protocol
with DELG local features (rerank.rerank_protocols; distractors have none: they
count 0 inliers). With asmk.mode (asmk_rerank.py) 'alone' the index is ranked
by ASMK / ASMK* / VLAD through an inverted file instead of the global search,
with 'rerank' the top asmk.depth of the global ranking are re-sorted by it;
geometric verification then works on that ranking. The summary holds the
usual mAP and mP@k lines per protocol, before and after each re-ranking (with
ASMK on, a last line gives each stage's ms per query: Evaluation.stage_ms).
`write_metrics` writes metrics.json/.txt.
The dolg-retrieve command (perform_retrieval.py) is a thin layer over this.
"""

import dataclasses
import json
import os
import time

import numpy as np
from absl import logging

from dolg_tf.data import ground_truth
from dolg_tf.io import descriptor_files, descriptor_reading
from dolg_tf.retrieval import (
  asmk_rerank,
  metrics,
  query_expansion,
  rerank,
  retrieval_config,
  superglobal,
)
from dolg_tf.utils import files as file_utils


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
    asmk_results: the results of the ASMK ranking (alone) or re-ranking
      (before geometric verification); None when asmk.mode is off.
    stage_ms: {stage: wall time per query in ms} of the stages that ran
      ('global search', 'SuperGlobal', 'ASMK', 'geometric verification').
  """

  results: dict[str, metrics.MapResult]
  global_results: dict[str, metrics.MapResult]
  summary: str
  num_database: int
  superglobal_results: dict[str, metrics.MapResult] | None = None
  superglobal_ms_per_query: float | None = None
  ranks: np.ndarray | None = None
  reranked: dict[str, np.ndarray] | None = None
  asmk_results: dict[str, metrics.MapResult] | None = None
  stage_ms: dict[str, float] = dataclasses.field(default_factory=dict)


def evaluate(
  gnd_path: str,
  query_source: str,
  index_source: str,
  distractor_source: str = "",
  config: retrieval_config.RetrievalConfig | None = None,
) -> Evaluation:
  """Ranks the database for every query and scores the three protocols.

  Args:
    gnd_path: gnd_*.pkl or .mat ground truth.
    query_source / index_source: descriptor folders or shard globs (folders
      holding the local feature files too with geometric verification).
    distractor_source: optional extra database descriptors (shard glob or
      folder), appended after the index images.
    config: the settings (default RetrievalConfig(): global search only).
      With SuperGlobal (superglobal.m > 0) the search fetches
      max(num_ranked, m) so that m candidates exist; the ranking is cut to
      num_ranked after re-ranking. Geometric verification re-ranks the top
      `geometric_verification.top_k` of the ranking (after SuperGlobal when
      it is on) with `<name><local_suffix>` DelfFeatures files. asmk.mode
      'alone' ranks by aggregated local features instead of the global
      search (global descriptors not read), 'rerank' re-sorts the global
      top asmk.depth by them (asmk_rerank.py), before verification.

  Returns:
    An Evaluation.

  Raises:
    descriptor_reading.MissingDescriptorsError (a KeyError and a ValueError):
      query or index descriptors (or, with geometric verification, local
      feature files; with ASMK, aggregated files) missing, all counted
      before anything is ranked.
    FileNotFoundError: a source matching nothing (named).
    ValueError / IOError: a malformed ground truth, descriptor dimensions
      that differ between queries, index and distractors, or a truncated,
      corrupt or non-finite descriptor file (each named).
  """
  config = config or retrieval_config.RetrievalConfig()
  gt = ground_truth.load_ground_truth(gnd_path)
  asmk = None
  if config.asmk.mode != "off":
    asmk = asmk_rerank.AsmkStage(config.asmk, gt.qimlist, gt.imlist, query_source, index_source)
  alone = config.asmk.mode == "alone"
  if alone and distractor_source:
    raise ValueError("asmk_mode=alone: distractors have no aggregated files (drop them)")
  check_descriptors(
    gt,
    query_source,
    index_source,
    None if alone else config.suffix,
    config.local_suffix if config.use_geometric_verification else None,
    asmk,
  )
  if asmk is not None:
    asmk.load()
  if alone:
    evaluation, num_index = _asmk_alone(asmk, gt, config), len(gt.imlist)
  else:
    evaluation, num_index, ranks, scores, k = _global_search(
      gt, query_source, index_source, distractor_source, config
    )
    if asmk is not None:
      asmk.rerank_evaluation(evaluation, gt, ranks, scores, k)
  if config.use_geometric_verification:
    _verify_geometrically(evaluation, gt, query_source, index_source, num_index, config)
  if asmk is not None:
    costs = ", ".join(f"{stage} {ms:.2f}" for stage, ms in evaluation.stage_ms.items())
    evaluation.summary += f"\nms per query: {costs}"
  return evaluation


def _global_search(gt, query_source, index_source, distractor_source, config):
  """Exact global search (+ QE / DBA, SuperGlobal) for `evaluate`.

  Returns:
    (Evaluation, index size, ranks [Q, depth], their scores, k): the ranking
    searched deep enough for the re-rankings, cut to k in the Evaluation.
  """
  queries, database, num_index = read_evaluation_descriptors(
    gt, query_source, index_source, distractor_source, config.suffix
  )
  k = min(config.num_ranked or len(database), len(database))
  # SuperGlobal / ASMK re-rank the top M: search at least M deep, cut to k afterwards.
  asmk_depth = config.asmk.depth if config.asmk.mode == "rerank" else 0
  depth = min(max(k, config.superglobal.m, asmk_depth), len(database))
  start = time.time()
  expansion = config.query_expansion
  ranks, scores = query_expansion.search_with_expansion(
    queries, database, depth, qe_n=expansion.qe_n, dba_n=expansion.dba_n, alpha=expansion.alpha
  )
  elapsed = time.time() - start
  logging.info(
    "ranked %d database images for %d queries in %.2fs", len(database), len(queries), elapsed
  )
  global_results = metrics.evaluate_revisited(ranks[:, :k], gt)
  summary = metrics.format_summary(gt.dataset, global_results)
  evaluation = Evaluation(global_results, global_results, summary, len(database))
  evaluation.stage_ms["global search"] = 1000.0 * elapsed / max(len(queries), 1)
  if config.superglobal.m:
    ranks = _superglobal_rerank(evaluation, gt, queries, database, ranks, scores, k, config)
  evaluation.ranks = ranks[:, :k]
  return evaluation, num_index, ranks, scores, k


def _asmk_alone(asmk, gt, config) -> Evaluation:
  """The Evaluation of the index ranked by the aggregated similarity alone."""
  k = min(config.num_ranked or len(gt.imlist), len(gt.imlist))
  ranks, results, summary, ms = asmk.evaluate_alone(gt, k)
  evaluation = Evaluation(results, results, summary, len(gt.imlist), asmk_results=results)
  evaluation.ranks, evaluation.stage_ms["ASMK"] = ranks, ms
  return evaluation


def _superglobal_rerank(evaluation, gt, queries, database, ranks, scores, k, config) -> np.ndarray:
  """SuperGlobal re-ranking of `ranks` for `evaluate`; fills its fields in `evaluation`."""
  options = config.superglobal
  start = time.time()
  ranks, _ = superglobal.superglobal_rerank(
    queries, database, ranks, scores, m=options.m, k=options.k, beta=options.beta
  )
  evaluation.superglobal_ms_per_query = 1000.0 * (time.time() - start) / max(len(queries), 1)
  evaluation.stage_ms["SuperGlobal"] = evaluation.superglobal_ms_per_query
  evaluation.results = evaluation.superglobal_results = metrics.evaluate_revisited(ranks[:, :k], gt)
  evaluation.summary = "\n".join(
    [
      "before SuperGlobal re-ranking:",
      evaluation.summary,
      f"after SuperGlobal re-ranking (M={options.m}, K={options.k}, "
      f"beta={options.beta:g}; {evaluation.superglobal_ms_per_query:.2f} ms/query):",
      metrics.format_summary(gt.dataset, evaluation.results),
    ]
  )
  return ranks


def _verify_geometrically(evaluation, gt, query_source, index_source, num_index, config) -> None:
  """Geometric verification of `evaluation.ranks` per protocol; fills `evaluation`."""
  query_loader = rerank.local_features_loader(query_source, gt.qimlist, config.local_suffix, 1)
  index_features = rerank.local_features_loader(index_source, gt.imlist, config.local_suffix)

  def index_loader(i: int):
    # Distractors (after the index images) have no local features: 0 inliers.
    return index_features(i) if i < num_index else None

  verification = config.geometric_verification
  evaluation.reranked = {}
  start = time.time()
  evaluation.results = rerank.rerank_protocols(
    evaluation.ranks,
    gt,
    query_loader,
    index_loader,
    verification,
    ranks_out=evaluation.reranked,
  )
  num_queries = max(len(evaluation.ranks), 1)
  evaluation.stage_ms["geometric verification"] = 1000.0 * (time.time() - start) / num_queries
  labelled = evaluation.superglobal_results is not None or evaluation.asmk_results is not None
  before = [] if labelled else ["before geometric verification:"]
  evaluation.summary = "\n".join(
    before
    + [
      evaluation.summary,
      f"after geometric verification (top {verification.top_k}, {verification.model} RANSAC):",
      metrics.format_summary(gt.dataset, evaluation.results),
    ]
  )


def read_evaluation_descriptors(
  gt: ground_truth.RevisitedGroundTruth,
  query_source: str,
  index_source: str,
  distractor_source: str = "",
  suffix: str = descriptor_files.DEFAULT_SUFFIX,
) -> tuple[np.ndarray, np.ndarray, int]:
  """The query descriptors, the database (index then distractors) and the index size.

  The dimensions of the index and distractor descriptors are checked on one
  descriptor each before the index is read.

  Raises:
    ValueError: descriptor dimensions that differ (both sides named).
  """
  _, queries = descriptor_reading.read_descriptors(
    query_source, ids=list(gt.qimlist), suffix=suffix
  )
  dim = queries.shape[1] if gt.num_queries else None
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
  return queries, database, num_index


def check_descriptors(
  gt: ground_truth.RevisitedGroundTruth,
  query_source: str,
  index_source: str,
  suffix: str | None = descriptor_files.DEFAULT_SUFFIX,
  local_suffix: str | None = None,
  asmk: asmk_rerank.AsmkStage | None = None,
) -> None:
  """Checks that every query and index image of `gt` has a descriptor, reading none.

  Args:
    gt: the ground truth.
    query_source / index_source: descriptor folders or shard globs.
    suffix: per-image global descriptor file suffix (None: global
      descriptors are not needed).
    local_suffix: if given, `<source>/<name><local_suffix>` local feature
      files are required too.
    asmk: if given, its aggregated files are required too.

  Raises:
    descriptor_reading.MissingDescriptorsError: one line counting what is
      missing on each side, with the first few names.
    FileNotFoundError: a source matching nothing (named).
  """
  problems, missing_all = [], []
  sides = (("query", query_source, gt.qimlist), ("index", index_source, gt.imlist))
  for what, source, names in sides if suffix is not None else ():
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
  if asmk is not None:
    asmk_problems, asmk_missing = asmk.missing()
    problems.extend(asmk_problems)
    missing_all.extend(asmk_missing)
  if problems:
    raise descriptor_reading.MissingDescriptorsError("; ".join(problems), missing_all)


def write_metrics(
  results: dict[str, metrics.MapResult],
  summary: str,
  output_dir: str,
  ms_per_query: dict[str, float] | None = None,
) -> str:
  """Writes metrics.json (mAP and mP@k per protocol) and metrics.txt atomically.

  Args:
    results: {protocol: MapResult}.
    summary: the printed lines (metrics.txt).
    output_dir: created if needed.
    ms_per_query: optional {stage: ms per query}, written as the
      "ms_per_query" entry of metrics.json when given.

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
  if ms_per_query:
    payload["ms_per_query"] = dict(ms_per_query)
  path = os.path.join(output_dir, "metrics.json")
  file_utils.atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
  file_utils.atomic_write_text(os.path.join(output_dir, "metrics.txt"), summary + "\n")
  return path
