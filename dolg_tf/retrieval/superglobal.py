"""SuperGlobal re-ranking with global descriptors only (Shao et al., ICCV 2023).

"Global Features are All You Need for Image Retrieval and Reranking": the top-M
of an initial cosine ranking is re-ranked in two steps, both on global
descriptors (no local features, no extra search over the database):

1. Top-M descriptor augmentation (the reference's MDescAug, a database-side
   refinement restricted to the query's own top-M). For each of the M
   candidates x_i, its K nearest other candidates x_j (cosine within the M) are
   averaged in with weight beta * s_ij, x_i itself with weight 1:
     r_i = (x_i + sum_j beta * s_ij * x_j) / (1 + sum_j beta * s_ij).
   s1_i = q . r_i, and the M candidates are re-sorted by s1.
2. Query expansion by maximum (the reference's RerankwMDA). The refined
   descriptors of the top K + 1 candidates of the s1 order are combined by an
   elementwise maximum into one vector q_exp; s2_i = q_exp . r_i and the final
   score is (s1_i + s2_i) / 2. The top-M are sorted by it; everything ranked
   below M keeps its initial order (and score).

Facts checked against the reference code (ShihaoShao-GH/SuperGlobal,
modules/reranking/MDescAug.py and RerankwMDA.py; read for facts only):
  * Defaults M = 400, K = 9, beta = 0.15. Both modules set their internal K to
    K + 1: step 1 takes the K + 1 most similar candidates *including the
    candidate itself*, and step 2 takes the max over the top K + 1 refined
    descriptors (10 with the defaults, not 9). This module does the same.
  * The refined descriptors are not re-normalised; s1 is the plain dot product
    q . r_i (|r_i| <= 1, so tight neighbourhoods keep higher scores). Not
    re-normalised here either.
  * RerankwMDA multiplies a copy of the top-K s1 scores by beta and never uses
    it: q_exp is the unweighted elementwise max. Here too (no beta in step 2).
  * q_exp itself is not normalised; s2 = q_exp . r_i.

Where this module differs (chosen, documented):
  * The candidate itself always gets weight 1 and its K neighbours are the K
    most similar *other* candidates. The reference sorts each similarity row
    and gives weight 1 to whatever comes first, normally the candidate itself
    (cosine 1); only an exact or near duplicate could come first instead,
    which changes r_i by rounding-level amounts.
  * Weights are beta * max(s_ij, 0): the reference uses the signed cosine,
    which for K * beta > 1 (1.35 with the defaults) can in principle make the
    weight sum zero or negative. The two agree whenever the K nearest
    candidates have non-negative cosine, as they do in practice.
  * Ties are broken deterministically (the reference uses torch's unstable
    sorts): among equally similar neighbours the earlier one in the initial
    ranking is taken; equal s1 keep the initial order; equal final scores
    keep the s1 order.
  * Fewer than M candidates (M larger than the database, or an approximate
    index returning id -1 padding): only the valid candidates are used, each
    with its min(K, valid - 1) nearest others, and the expansion takes the
    top min(K + 1, valid); padding stays last. The reference assumes M
    candidates exist.
  * Queries and candidate descriptors are L2-normalised here (zero vectors
    stay zero), as the reference expects normalised inputs.
  * The re-ranking works on a given list of candidate ids (exact search, any
    `search_index.SearchIndex`, or an index plus distractor rows), batched over
    queries with no per-query Python loop, and gathers only the M candidate
    rows of the database.

Returned scores: positions < M hold the final SuperGlobal score (s1 + s2) / 2,
positions >= M the initial scores; the two are not comparable.
"""

import dataclasses
from typing import Any

import numpy as np

from dolg_tf.utils import arrays

DEFAULT_M = 400
DEFAULT_K = 9
DEFAULT_BETA = 0.15


def check_params(m: int, k: int, beta: float, prefix: str = "superglobal ") -> None:
  """Refuses negative m, k or beta (ValueError naming `<prefix>m`, ...)."""
  if m < 0:
    raise ValueError(f"{prefix}m must be >= 0 (0 = off), got {m}")
  if k < 0:
    raise ValueError(f"{prefix}k must be >= 0, got {k}")
  if not beta >= 0:
    raise ValueError(f"{prefix}beta must be >= 0, got {beta}")


@dataclasses.dataclass(frozen=True)
class SuperGlobalConfig:
  """SuperGlobal re-ranking of an evaluation (retrieval_config.RetrievalConfig.superglobal).

  Errors name the fields as the flags do (`superglobal_m`, ...).

  Attributes:
    m: candidates re-ranked per query (0 = off; the paper uses DEFAULT_M).
    k: neighbours of step 1, excluding the candidate itself (step 2: top k + 1).
    beta: neighbour weight of step 1.
  """

  m: int = 0
  k: int = DEFAULT_K
  beta: float = DEFAULT_BETA

  def __post_init__(self):
    check_params(self.m, self.k, self.beta, prefix="superglobal_")


def refine_candidates(candidates: Any, valid: Any, k: int, beta: float) -> np.ndarray:
  """Step 1 (MDescAug): each candidate averaged with its k nearest other candidates.

  Args:
    candidates: float [B, M, D] L2-normalised descriptors of each query's
      top-M, in initial rank order (rows of invalid candidates are ignored).
    valid: bool [B, M], False for padding (no candidate).
    k: neighbours per candidate, excluding itself.
    beta: neighbour weight factor (weight beta * max(cosine, 0); itself 1).

  Returns:
    float32 [B, M, D] refined descriptors (not re-normalised; zero for
    invalid candidates).
  """
  x = np.asarray(candidates, dtype=np.float32)
  valid = np.asarray(valid, dtype=bool)
  if x.ndim != 3 or valid.shape != x.shape[:2]:
    raise ValueError(
      f"candidates must be [B, M, D] and valid [B, M], got {x.shape} and {valid.shape}"
    )
  x = np.where(valid[..., None], x, np.float32(0))
  m = x.shape[1]
  kk = min(k, m - 1)
  if kk <= 0 or beta == 0:
    return x
  sims = np.matmul(x, np.swapaxes(x, 1, 2))  # [B, M, M]
  # Neither the candidate itself nor padding can be a neighbour.
  sims[:, np.arange(m), np.arange(m)] = -np.inf
  sims = np.where(valid[:, None, :], sims, np.float32(-np.inf))
  # The kk largest of each row without sorting: all above the kk-th largest
  # value, then as many entries equal to it as needed, earliest rank first.
  kth = np.partition(sims, m - kk, axis=-1)[..., m - kk, None]
  chosen = sims >= kth
  # Rows with ties at the kk-th value (rare, or padding: -inf) keep the earliest.
  crowded = np.count_nonzero(chosen, axis=-1) > kk
  if crowded.any():
    row_sims, row_kth = sims[crowded], kth[crowded]
    above = row_sims > row_kth
    ties = row_sims == row_kth
    missing = kk - np.count_nonzero(above, axis=-1, keepdims=True)
    chosen[crowded] = above | (ties & (np.cumsum(ties, axis=-1) <= missing))
  weights = np.where(chosen, np.float32(beta) * np.maximum(sims, np.float32(0)), np.float32(0))
  refined = x + np.matmul(weights, x)
  refined /= 1.0 + weights.sum(axis=-1, keepdims=True)
  return np.where(valid[..., None], refined, np.float32(0))


def max_expanded_query(refined: Any, order: Any, valid: Any, k: int) -> np.ndarray:
  """Step 2's expanded query: elementwise max of the top k + 1 refined descriptors.

  Args:
    refined: float [B, M, D] refined descriptors (initial rank order).
    order: int [B, M] positions into M sorted by descending s1.
    valid: bool [B, M] (initial rank order).
    k: the K of the re-ranking; the top min(k + 1, number valid) are used.

  Returns:
    float32 [B, D] (zero for a query without candidates).
  """
  refined = np.asarray(refined, dtype=np.float32)
  top = np.asarray(order)[:, : k + 1]
  top_valid = np.take_along_axis(np.asarray(valid, dtype=bool), top, axis=1)
  top_refined = np.take_along_axis(refined, top[..., None], axis=1)
  top_refined = np.where(top_valid[..., None], top_refined, np.float32(-np.inf))
  expanded = top_refined.max(axis=1)
  return np.where(top_valid.any(axis=1, keepdims=True), expanded, np.float32(0))


def _rerank_block(
  q: np.ndarray, candidates: np.ndarray, valid: np.ndarray, k: int, beta: float
) -> tuple[np.ndarray, np.ndarray]:
  """Positions into M in the new order and their final scores, for one query block."""
  refined = refine_candidates(candidates, valid, k, beta)
  s1 = np.matmul(refined, q[:, :, None])[..., 0]
  s1 = np.where(valid, s1, np.float32(-np.inf))
  # Stable sorts: equal s1 keep the initial order, equal final scores the s1 order.
  order1 = np.argsort(-s1, axis=1, kind="stable")
  expanded = max_expanded_query(refined, order1, valid, k)
  s2 = np.matmul(refined, expanded[:, :, None])[..., 0]
  final = np.where(valid, (s1 + s2) / np.float32(2), np.float32(-np.inf))
  final_in_s1_order = np.take_along_axis(final, order1, axis=1)
  order2 = np.argsort(-final_in_s1_order, axis=1, kind="stable")
  positions = np.take_along_axis(order1, order2, axis=1)
  return positions, np.take_along_axis(final, positions, axis=1)


def superglobal_rerank(
  queries: Any,
  database: Any,
  ids: Any,
  scores: Any,
  *,
  m: int = DEFAULT_M,
  k: int = DEFAULT_K,
  beta: float = DEFAULT_BETA,
  query_block: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
  """Re-ranks the top-m of each ranking with SuperGlobal (module docstring).

  Args:
    queries: [Q, D] query descriptors (normalised here).
    database: [N, D] database descriptors (index + distractors; only the
      candidate rows are read and normalised).
    ids: int [Q, W] initial rankings, best first (-1 = padding, last), e.g.
      from `exact_search.exact_search` or a `search_index.SearchIndex`.
    scores: float [Q, W] their scores (kept for positions >= m).
    m: candidates re-ranked per query (0 = unchanged; more than W: all W).
    k: neighbours of step 1 (excluding the candidate itself); step 2 takes
      the max over the top k + 1.
    beta: neighbour weight of step 1.
    query_block: queries per batch (peak memory about query_block * m *
      (2 D + 3 m) * 4 bytes).

  Returns:
    (ids int64 [Q, W], scores float32 [Q, W]): the top-m re-ranked with their
    final scores (s1 + s2) / 2, the rest unchanged.

  Raises:
    ValueError: bad shapes, an id outside the database, or m, k, beta < 0.
  """
  check_params(m, k, beta)
  if query_block < 1:
    raise ValueError(f"superglobal query_block must be >= 1, got {query_block}")
  ids = np.array(ids, dtype=np.int64)
  scores = np.array(scores, dtype=np.float32)
  q = arrays.l2_normalize(np.asarray(queries, dtype=np.float32), axis=-1)
  db = np.asarray(database)
  if q.ndim != 2 or db.ndim != 2 or ids.ndim != 2:
    raise ValueError(
      f"queries, database and ids must be 2-D, got {q.shape}, {db.shape} and {ids.shape}"
    )
  if ids.shape != scores.shape or ids.shape[0] != q.shape[0]:
    raise ValueError(
      f"ids {ids.shape} and scores {scores.shape} must both be [num_queries={q.shape[0]}, W]"
    )
  if q.shape[1] != db.shape[1]:
    raise ValueError(f"queries have dim {q.shape[1]} but the database has dim {db.shape[1]}")
  if ids.size and ids.max() >= db.shape[0]:
    raise ValueError(f"ids: {ids.max()} is outside the database of {db.shape[0]} rows")
  width = min(m, ids.shape[1])
  if width == 0:
    return ids, scores
  for q0 in range(0, q.shape[0], query_block):
    rows = slice(q0, q0 + query_block)
    top = ids[rows, :width]
    valid = top >= 0
    candidates = arrays.l2_normalize(db[np.maximum(top, 0)], axis=-1)
    positions, final = _rerank_block(q[rows], candidates, valid, k, beta)
    ids[rows, :width] = np.take_along_axis(top, positions, axis=1)
    scores[rows, :width] = final
  return ids, scores
