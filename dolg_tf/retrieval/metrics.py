"""Retrieval metrics: the revisited Oxford / Paris protocol and GLDv2 mAP@100.

Revisited protocol (Radenovic et al., CVPR 2018), reproducing the reference
evaluation of the revisitop code (`compute_ap` / `compute_map` in
`python/evaluate.py`) number for number:

* Layout of `ranks`: here **[num_queries, num_ranked]**, row q is the database
  indices ordered from most to least similar for query q (0-based;
  num_ranked <= num_db, a truncated ranking is allowed). revisitop uses the
  transpose, [num_db, num_queries]; pass `ranks.T` for arrays made for it.
* Per query, `ok` are the positives and `junk` the ignored images of the
  protocol (`ground_truth.protocol_ground_truth`). A query with no positives
  is skipped: its AP and P@k are NaN, it is left out of the means, and it is
  counted in `MapResult.num_skipped`.
* Junk removal: let `pos` be the 0-based positions of the positives in the
  ranking; each is decreased by the number of junk images ranked strictly
  before it. This equals deleting junk images from the ranking.
* AP (trapezoidal rule over the precision-recall curve): with the i-th
  positive (i = 0, 1, ...) at junk-free position r_i,
  `AP = sum_i (P0_i + P1_i) / 2 * (1 / nres)`, with `P0_i = i / r_i`
  (1 when r_i = 0) the precision just before the hit and
  `P1_i = (i + 1) / (r_i + 1)` the precision at the hit. `nres` is the
  number of entries of `ok` (positives absent from a truncated ranking
  thus lower AP).
* P@k, revisitop's convention (not the textbook one): with the positions made
  1-based, `p = r + 1`, `kq = min(max(p), k)` and
  `P@k = #{p <= kq} / kq`. That is, k is clipped to the 1-based position of
  the last retrieved positive, so a query whose only positive is ranked first
  has P@5 = P@10 = 1. mP@k is the mean over the non-skipped queries.
  (revisitop fails when no positive is present in a truncated ranking; here
  such a query gets P@k = 0 and AP = 0.)

GLDv2 retrieval (Kaggle Landmark Retrieval 2019 / DELF `metrics.py`):
mAP@100 = mean over queries that have at least one relevant index image of
`AP@100 = sum_{i<=100} P(i) rel(i) / min(num_relevant, 100)`; queries without
ground truth (Usage 'Ignored' or no images) are not counted; a missing
prediction counts as AP 0; a repeated prediction is counted once (it still
uses up its rank).
"""

import csv
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dolg_tf.data import ground_truth as gt_lib

DEFAULT_KAPPAS = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class MapResult:
  """Result of `compute_map` for one protocol.

  Attributes:
    mean_ap: mAP over the non-skipped queries (NaN if all were skipped).
    aps: [num_queries] per-query AP, NaN for skipped queries.
    mean_precision_at_k: [len(kappas)] mP@k over the non-skipped queries.
    precision_at_k: [num_queries, len(kappas)] per-query P@k (NaN if skipped).
    kappas: the k values.
    num_skipped: number of queries without positives.
  """

  mean_ap: float
  aps: np.ndarray
  mean_precision_at_k: np.ndarray
  precision_at_k: np.ndarray
  kappas: tuple[int, ...]
  num_skipped: int


def average_precision(positions: np.ndarray, num_positives: int) -> float:
  """Trapezoidal AP from sorted 0-based junk-free positions of positives.

  Args:
    positions: increasing 0-based positions of the retrieved positives in the
      ranking after junk removal.
    num_positives: total number of positives of the query (> 0).

  Returns:
    The average precision (revisitop `compute_ap`).
  """
  r = np.asarray(positions, dtype=np.float64).ravel()
  if num_positives <= 0:
    raise ValueError(f"num_positives must be > 0, got {num_positives}")
  if r.size == 0:
    return 0.0
  i = np.arange(r.size, dtype=np.float64)
  before = np.where(r == 0, 1.0, i / np.maximum(r, 1.0))
  at = (i + 1.0) / (r + 1.0)
  return float(np.sum((before + at) * 0.5) / num_positives)


def _precision_at_k(positions: np.ndarray, kappas: Sequence[int]) -> np.ndarray:
  """revisitop P@k: k clipped to the 1-based position of the last positive."""
  if positions.size == 0:
    return np.zeros(len(kappas))
  one_based = positions + 1
  last = one_based.max()
  out = np.empty(len(kappas))
  for j, k in enumerate(kappas):
    kq = min(last, k)
    out[j] = np.count_nonzero(one_based <= kq) / kq
  return out


def _check_ranks(ranks: Any, num_queries: int) -> np.ndarray:
  ranks = np.asarray(ranks)
  if ranks.ndim != 2:
    raise ValueError(f"ranks must be [num_queries, num_ranked], got shape {ranks.shape}")
  if not np.issubdtype(ranks.dtype, np.integer):
    raise ValueError(f"ranks must hold integer indices, got dtype {ranks.dtype}")
  if ranks.shape[0] != num_queries:
    raise ValueError(
      f"ranks has {ranks.shape[0]} rows but the ground truth has {num_queries} queries; "
      "ranks must be [num_queries, num_ranked] (revisitop's layout transposed)"
    )
  return ranks


def positive_positions(
  ranking: np.ndarray, ok: Sequence[int], junk: Sequence[int] = ()
) -> np.ndarray:
  """Sorted 0-based positions of the positives in `ranking` once junk is removed.

  Args:
    ranking: int [K] database indices, most similar first.
    ok: the positives' database indices.
    junk: the ignored images' database indices.

  Returns:
    int64 [P] positions (a positive absent from a truncated ranking has none).
  """
  ranking = np.asarray(ranking)
  ok = np.asarray(ok, dtype=np.int64).ravel()
  junk = np.asarray(junk, dtype=np.int64).ravel()
  positions = np.flatnonzero(np.isin(ranking, ok))
  junk_positions = np.flatnonzero(np.isin(ranking, junk))
  # Junk ranked strictly before each positive shifts it up.
  return positions - np.searchsorted(junk_positions, positions, side="left")


def precision_recall(
  ranking: np.ndarray, ok: Sequence[int], junk: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
  """The precision-recall curve of one ranking, junk removed (the points AP integrates).

  Args:
    ranking: int [K] database indices, most similar first.
    ok: the positives' database indices (at least one).
    junk: the ignored images' database indices.

  Returns:
    (recall, precision), float64 [P + 1] each: (0, 1), then one point per
    retrieved positive, at its junk-free position r_i: recall (i + 1) / |ok|,
    precision (i + 1) / (r_i + 1).

  Raises:
    ValueError: if `ok` is empty.
  """
  ok = np.asarray(ok, dtype=np.int64).ravel()
  if ok.size == 0:
    raise ValueError("precision_recall needs at least one positive")
  positions = positive_positions(ranking, ok, junk).astype(np.float64)
  hits = np.arange(1, positions.size + 1, dtype=np.float64)
  recall = np.concatenate([[0.0], hits / ok.size])
  precision = np.concatenate([[1.0], hits / (positions + 1.0)])
  return recall, precision


def compute_map(
  ranks: np.ndarray,
  gnd: Sequence[Mapping[str, Any]],
  kappas: Iterable[int] = DEFAULT_KAPPAS,
) -> MapResult:
  """mAP and mP@k of rankings against per-query 'ok' / 'junk' lists.

  Args:
    ranks: int array [num_queries, num_ranked] of 0-based database indices,
      most similar first (see the module docstring for the transpose).
    gnd: one mapping per query with 'ok' (positives) and optionally 'junk'
      (ignored), e.g. from `ground_truth.protocol_ground_truth`.
    kappas: the k of P@k.

  Returns:
    A `MapResult`.

  Raises:
    ValueError: bad shapes or kappas.
  """
  kappas = tuple(int(k) for k in kappas)
  if any(k < 1 for k in kappas):
    raise ValueError(f"kappas must be >= 1, got {kappas}")
  ranks = _check_ranks(ranks, len(gnd))
  num_queries = len(gnd)
  aps = np.full(num_queries, np.nan)
  prs = np.full((num_queries, len(kappas)), np.nan)
  num_skipped = 0
  for q, entry in enumerate(gnd):
    ok = np.asarray(entry["ok"], dtype=np.int64).ravel()
    if ok.size == 0:
      num_skipped += 1
      continue
    positions = positive_positions(ranks[q], ok, entry.get("junk", ()))
    aps[q] = average_precision(positions, ok.size)
    prs[q] = _precision_at_k(positions, kappas)
  evaluated = num_queries - num_skipped
  if evaluated:
    mean_ap = float(np.nanmean(aps))
    mean_pr = np.nanmean(prs, axis=0) if kappas else np.zeros(0)
  else:
    mean_ap = float("nan")
    mean_pr = np.full(len(kappas), np.nan)
  return MapResult(
    mean_ap=mean_ap,
    aps=aps,
    mean_precision_at_k=np.asarray(mean_pr, dtype=np.float64),
    precision_at_k=prs,
    kappas=kappas,
    num_skipped=num_skipped,
  )


def evaluate_revisited(
  ranks: np.ndarray,
  gnd: gt_lib.RevisitedGroundTruth | Sequence[Mapping[str, Any]],
  kappas: Iterable[int] = DEFAULT_KAPPAS,
) -> dict[str, MapResult]:
  """Easy, medium and hard results of one ranking.

  Args:
    ranks: [num_queries, num_ranked] database indices, most similar first.
    gnd: a `RevisitedGroundTruth` or its per-query list (easy, hard, junk).
    kappas: the k of P@k.

  Returns:
    {'easy': MapResult, 'medium': MapResult, 'hard': MapResult}.
  """
  kappas = tuple(kappas)
  return {
    protocol: compute_map(ranks, gt_lib.protocol_ground_truth(gnd, protocol), kappas)
    for protocol in gt_lib.PROTOCOLS
  }


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
  """[num_queries, num_db] similarities -> rankings, most similar first.

  Ties keep the lower database index first.
  """
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f"scores must be [num_queries, num_db], got shape {scores.shape}")
  return np.argsort(-scores, axis=1, kind="stable")


def format_summary(dataset: str, results: Mapping[str, MapResult]) -> str:
  """The usual two result lines, values in percent with two decimals.

  Example:
    >> roxford5k: mAP E: 85.10, M: 66.30, H: 40.10
    >> roxford5k: mP@k[1 5 10] E: [97.06 92.65 88.82], M: [...], H: [...]

  Args:
    dataset: name printed after '>>'.
    results: output of `evaluate_revisited`.

  Returns:
    Two lines joined by a newline.
  """
  e, m, h = (results[p] for p in gt_lib.PROTOCOLS)

  def pct(values):
    return "[" + " ".join(f"{100.0 * v:.2f}" for v in values) + "]"

  ks = " ".join(str(k) for k in e.kappas)
  return (
    f">> {dataset}: mAP E: {100 * e.mean_ap:.2f}, M: {100 * m.mean_ap:.2f}, "
    f"H: {100 * h.mean_ap:.2f}\n"
    f">> {dataset}: mP@k[{ks}] E: {pct(e.mean_precision_at_k)}, "
    f"M: {pct(m.mean_precision_at_k)}, H: {pct(h.mean_precision_at_k)}"
  )


# ----------------------------------------------------------------------------- GLDv2


def gldv2_map_at_k(
  predictions: Mapping[str, Sequence[str]],
  solution: Mapping[str, Sequence[str]],
  k: int = 100,
) -> float:
  """GLDv2 retrieval mAP@k (Kaggle's definition, k = 100 in the challenge).

  Args:
    predictions: query id -> ranked index image ids (first = best).
    solution: query id -> relevant index image ids. Queries with an empty list
      are ignored; predictions for ids absent from `solution` are ignored.
    k: cut-off.

  Returns:
    The mean of AP@k over the queries with ground truth (NaN if none).
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  total, count = 0.0, 0
  for query_id, relevant in solution.items():
    relevant = set(relevant)
    if not relevant:
      continue
    count += 1
    seen = set()
    hits = 0
    ap = 0.0
    for i, image_id in enumerate(list(predictions.get(query_id, ()))[:k]):
      if image_id in seen:
        continue
      seen.add(image_id)
      if image_id in relevant:
        hits += 1
        ap += hits / (i + 1)
    total += ap / min(len(relevant), k)
  return total / count if count else float("nan")


def _read_csv_rows(path: str, required: Sequence[str]) -> list[dict[str, str]]:
  if not os.path.isfile(path):
    raise OSError(f"{path}: file not found")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header: {header})")
    return list(reader)


def _split_images(value: str | None) -> list[str]:
  value = (value or "").strip()
  if not value or value == "None":
    return []
  return value.split()


def read_gldv2_retrieval_solution(
  path: str, usages: Iterable[str] = ("Public", "Private")
) -> dict[str, list[str]]:
  """Reads the GLDv2 retrieval solution CSV (columns id, images, Usage).

  Args:
    path: CSV file; `images` holds space-separated index image ids.
    usages: rows kept by their Usage value ('Ignored' rows are dropped by
      default).

  Returns:
    query id -> relevant index ids (queries without images are dropped).

  Raises:
    IOError / ValueError: missing file, columns or a repeated query id.
  """
  usages = set(usages)
  solution = {}
  for line, row in enumerate(_read_csv_rows(path, ("id", "images", "Usage")), start=2):
    query_id = (row["id"] or "").strip()
    if not query_id:
      raise ValueError(f"{path}: line {line} has an empty id")
    if query_id in solution:
      raise ValueError(f"{path}: line {line} repeats query id {query_id}")
    if (row["Usage"] or "").strip() not in usages:
      continue
    images = _split_images(row["images"])
    if images:
      solution[query_id] = images
  return solution


def read_gldv2_predictions(path: str) -> dict[str, list[str]]:
  """Reads a GLDv2 retrieval submission CSV (columns id, images).

  Args:
    path: CSV file; `images` holds space-separated ranked index ids.

  Returns:
    query id -> ranked index ids.

  Raises:
    IOError / ValueError: missing file, columns or a repeated query id.
  """
  predictions = {}
  for line, row in enumerate(_read_csv_rows(path, ("id", "images")), start=2):
    query_id = (row["id"] or "").strip()
    if not query_id:
      raise ValueError(f"{path}: line {line} has an empty id")
    if query_id in predictions:
      raise ValueError(f"{path}: line {line} repeats query id {query_id}")
    predictions[query_id] = _split_images(row["images"])
  return predictions
