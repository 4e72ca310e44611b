"""Retrieval with aggregated local features (ASMK / ASMK* / VLAD) in dolg-retrieve.

AsmkConfig (RetrievalConfig.asmk, flags --asmk_*) chooses the mode:

  off     nothing changes (the default).
  alone   the index is ranked by the aggregated similarity alone
          (asmk_similarity.py, DELF's semantics), through an inverted file
          over visual words (inverted_file.py): global descriptors are not
          read. Distractor shards are refused (they have no aggregated files).
  rerank  the global ranking (after alpha-QE / DBA when on) is searched
          `depth` deep and its top `depth` images are re-sorted per query by

              score = asmk + global_weight * global

          (asmk: the aggregated similarity from the inverted file's
          restricted mode; global: the global search's similarity), best
          first, ties kept in global order; positions below `depth` keep
          their global order. global_weight = 0 (the default) sorts the
          candidates by ASMK alone, as DELF's Detect-to-Retrieve pipeline
          ranks; a positive weight mixes the two similarities. Distractors
          (no aggregated files) score -1, DELF's value for an image without
          visual words.

Geometric verification (--use_geometric_verification) then re-ranks the
resulting top gv_top_k as usual (evaluation.py), which gives the
Detect-to-Retrieve / DELG pipeline: aggregated ranking + local verification.

The aggregated files are `<dir>/<name><extension>` as DELF writes them
(dolg-aggregate; aggregation.py): `.asmk`, `.asmk_star`, `.vlad`, with an
`r` before the type for regional aggregation (`.rasmk_star`). The
similarity settings (aggregation_type, feature_dimensionality,
use_l2_normalization, alpha, tau) come from the index's AggregationConfig
text file, as in DELF's perform_retrieval.
"""

import dataclasses
import os
import time

import numpy as np
from absl import logging

from dolg_tf.io import aggregation_config_io, descriptor_reading
from dolg_tf.retrieval import aggregation, asmk_similarity, inverted_file, metrics
from dolg_tf.utils import progress

MODES = ("off", "alone", "rerank")


@dataclasses.dataclass(frozen=True)
class AsmkConfig:
  """Aggregated local feature retrieval settings (module doc); flags --asmk_<field>.

  Attributes:
    mode: off | alone | rerank.
    aggregation_config: the index's AggregationConfig text file (DELF's
      format); required unless mode is off.
    query_dir: folder of the queries' aggregated files ('' = the query
      descriptor folder).
    index_dir: folder of the index images' aggregated files ('' = the index
      descriptor folder).
    depth: rerank: the top images of the global ranking re-sorted.
    global_weight: rerank: weight of the global similarity in the score.
  """

  mode: str = "off"
  aggregation_config: str = ""
  query_dir: str = ""
  index_dir: str = ""
  depth: int = 100
  global_weight: float = 0.0

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
    if self.depth < 1:
      raise ValueError(f"depth: must be >= 1, got {self.depth}")
    if self.global_weight < 0 or not np.isfinite(self.global_weight):
      raise ValueError(f"global_weight: must be finite and >= 0, got {self.global_weight}")
    if self.mode != "off" and not self.aggregation_config:
      raise ValueError(f"aggregation_config: required with mode={self.mode}")


def _read(path: str, config) -> tuple[np.ndarray, np.ndarray | None]:
  """One aggregated file (aggregation.read_aggregated): (descriptors, visual words or None)."""
  descriptors, words = aggregation.read_aggregated(path, config.aggregation_type, config)
  if config.aggregation_type == asmk_similarity.VLAD:
    return descriptors, None
  return descriptors, words


class AsmkStage:
  """The aggregated files of one evaluation and what is computed from them.

  Args:
    options: the AsmkConfig.
    query_names / index_names: the ground truth's qimlist / imlist.
    query_source / index_source: the descriptor folders (the defaults of
      options.query_dir / index_dir).

  Raises:
    FileNotFoundError / ValueError: the AggregationConfig file (named).
  """

  def __init__(self, options: AsmkConfig, query_names, index_names, query_source, index_source):
    self.options = options
    self.config = aggregation_config_io.load_config(options.aggregation_config, need_codebook=False)
    self.similarity = asmk_similarity.AggregatedSimilarity(self.config)
    self.extension = aggregation.output_extension(self.config)
    self.sides = (
      ("query", options.query_dir or query_source, list(query_names)),
      ("index", options.index_dir or index_source, list(index_names)),
    )
    self.name = aggregation_config_io.type_name(self.config.aggregation_type)
    self.index = None
    self.queries = None
    self.build_seconds = 0.0

  def missing(self) -> tuple[list[str], list[str]]:
    """(one message per side with missing aggregated files, the missing names)."""
    problems, missing_all = [], []
    for side, folder, names in self.sides:
      missing = [n for n in names if not os.path.isfile(os.path.join(folder, n + self.extension))]
      if missing:
        what = f"{side} aggregated files (*{self.extension})"
        problems.append(descriptor_reading.missing_message(missing, len(names), what, folder))
        missing_all.extend(missing)
    return problems, missing_all

  def load(self) -> None:
    """Reads the aggregated files and builds the inverted file of the index."""
    start = time.time()
    loaded = {}
    for side, folder, names in self.sides:
      reporter = progress.Progress(len(names), verb=f"read {side} {self.name}", unit="files")
      items = []
      for name in names:
        items.append(_read(os.path.join(folder, name + self.extension), self.config))
        reporter.update(len(items))  # a line every 30 s; load() logs the total
      loaded[side] = items
    self.queries = loaded["query"]
    self.index = inverted_file.InvertedFile.build(self.similarity, loaded["index"])
    self.build_seconds = time.time() - start
    logging.info(
      "%s inverted file: %d images, %.1f MB, read and built in %.1fs",
      self.name,
      self.index.num_images,
      self.index.nbytes()["total"] / 1e6,
      self.build_seconds,
    )

  def rank(self, k: int) -> np.ndarray:
    """int [Q, k]: every query's ranking of the index by the aggregated similarity."""
    return np.stack([self.index.search(d, w, k)[0] for d, w in self.queries]).astype(np.int64)

  def rerank(self, ranks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The global `ranks` [Q, K] (`scores` their similarities) with the top depth re-sorted."""
    return rerank_ranks(
      ranks,
      scores,
      lambda q, candidates: self.scores(q, candidates),
      self.options.depth,
      self.options.global_weight,
    )

  def scores(self, query: int, candidates: np.ndarray) -> np.ndarray:
    """Aggregated similarity of query `query` to database `candidates` (-1 beyond the index)."""
    out = np.full(len(candidates), asmk_similarity.EMPTY_SIMILARITY)
    inside = candidates < self.index.num_images
    descriptors, words = self.queries[query]
    out[inside] = self.index.scores(descriptors, words, candidates=candidates[inside])
    return out

  def evaluate_alone(self, gt, k: int):
    """(ranks [Q, k], results, summary, ms per query) of the index ranked by ASMK alone."""
    start = time.time()
    ranks = self.rank(k)
    ms = 1000.0 * (time.time() - start) / max(len(ranks), 1)
    results = metrics.evaluate_revisited(ranks, gt)
    megabytes = self.index.nbytes()["total"] / 1e6
    summary = "\n".join(
      [
        f"{self.name} alone (inverted file of {megabytes:.1f} MB; {ms:.2f} ms/query):",
        metrics.format_summary(gt.dataset, results),
      ]
    )
    return ranks, results, summary, ms

  def rerank_evaluation(self, evaluation, gt, ranks, scores, k: int) -> None:
    """Re-sorts the global `ranks` (`scores`) and fills evaluation.Evaluation `evaluation`.

    Sets its ranks (cut to k), results, asmk_results, stage_ms['ASMK'] and
    summary (before / after lines).
    """
    start = time.time()
    ranks = self.rerank(ranks, scores)[:, :k]
    ms = evaluation.stage_ms["ASMK"] = 1000.0 * (time.time() - start) / max(len(ranks), 1)
    evaluation.ranks = ranks
    evaluation.results = evaluation.asmk_results = metrics.evaluate_revisited(ranks, gt)
    options = self.options
    evaluation.summary = "\n".join(
      [
        f"before {self.name} re-ranking:",
        evaluation.summary,
        f"after {self.name} re-ranking (top {options.depth}, score = {self.name} + "
        f"{options.global_weight:g} x global; {ms:.2f} ms/query):",
        metrics.format_summary(gt.dataset, evaluation.results),
      ]
    )


def rerank_ranks(
  ranks: np.ndarray,
  scores: np.ndarray,
  asmk_scores,
  depth: int,
  global_weight: float = 0.0,
) -> np.ndarray:
  """Re-sorts the top `depth` of every ranking by asmk + global_weight * global (module doc).

  Args:
    ranks: int [Q, K] database indices, best first.
    scores: [Q, K] their global similarities.
    asmk_scores: (query index, int [n] candidates) -> [n] aggregated similarities.
    depth: positions re-sorted per query.
    global_weight: weight of the global similarity.

  Returns:
    int [Q, K]: the top `depth` re-sorted (ties in global order), the rest unchanged.
  """
  ranks = np.asarray(ranks)
  out = ranks.copy()
  depth = min(depth, ranks.shape[1])
  for q in range(ranks.shape[0]):
    candidates = ranks[q, :depth]
    combined = np.asarray(asmk_scores(q, candidates), np.float64)
    if global_weight:
      combined = combined + global_weight * np.asarray(scores[q, :depth], np.float64)
    out[q, :depth] = candidates[np.argsort(-combined, kind="stable")]
  return out
