"""Exact top-k by inner product over global descriptors, and the shared result format.

`exact_search` is brute force. backend 'numpy': tiled matrix products. Queries
are processed in blocks of `query_block` rows and the database in blocks of
`db_block` rows, so at most a [query_block, db_block] similarity tile exists
at once; a running top-k per query is kept (`np.argpartition`, plus a
threshold on the current k-th best score that skips most of a tile once the
top-k has settled). backend 'faiss': `faiss.knn`, the same results up to float
rounding. It is opt-in, not the default: on this 2-core machine it was 1.3x
faster than the tiles for 1000 queries against 1M x 512
(benchmarks/search_benchmark.py) and 2.8x for 1000 queries against 300k random
vectors, but 6x slower for 200 queries against 1M (the installed faiss-cpu
wheel has no AVX2 build and falls back to its generic one).

Every search of the retrieval package (this one, the indexes of indexes.py,
query_expansion.py) returns `(ids, scores)`: ids int64 [num_queries, k],
scores float32 [num_queries, k], sorted by descending score (equal scores:
lower id first; which of several items tied at the k-th score is kept is
unspecified). When fewer than k results exist (k > database size, or an
approximate index found fewer) the rows are padded with id -1 and score -inf
(`sort_results`).
"""

from typing import Any

import numpy as np

from dolg_tf.utils import arrays


def as_matrix(x: Any, name: str) -> np.ndarray:
  """`x` as a contiguous float32 [n, dim] matrix (ValueError naming `name` otherwise)."""
  arr = np.ascontiguousarray(x, dtype=np.float32)
  if arr.ndim != 2:
    raise ValueError(f"{name} must be a 2-D [n, dim] array, got shape {arr.shape}")
  return arr


def normalized_matrix(x: Any, name: str) -> np.ndarray:
  """`x` as a float32 [n, dim] matrix with L2-normalised rows (zero rows stay zero)."""
  return arrays.l2_normalize(as_matrix(x, name), axis=1)


def sort_results(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorts rows by descending score (ties: lower id), pads to k columns."""
  ids = np.asarray(ids, dtype=np.int64)
  scores = np.asarray(scores, dtype=np.float32)
  scores = np.where(ids < 0, np.float32(-np.inf), scores)
  nq = ids.shape[0]
  out_ids = np.full((nq, k), -1, dtype=np.int64)
  out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
  width = min(k, ids.shape[1])
  if nq and ids.shape[1]:
    # Missing entries (-1, -inf) go last; among equal scores lower ids first.
    missing = (ids < 0).astype(np.int8)
    order = np.lexsort((ids, -scores, missing), axis=1)[:, :width]
    out_ids[:, :width] = np.take_along_axis(ids, order, axis=1)
    out_scores[:, :width] = np.take_along_axis(scores, order, axis=1)
  return out_ids, out_scores


def _top_k_unsorted(scores: np.ndarray, k: int) -> np.ndarray:
  """Column indices of the k largest entries of each row (any order)."""
  n = scores.shape[1]
  if k >= n:
    return np.broadcast_to(np.arange(n), scores.shape).copy()
  return np.argpartition(scores, n - k, axis=1)[:, n - k :]


def _merge_block(
  best_s: np.ndarray, best_i: np.ndarray, sims: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray]:
  """Merges one [rows, block] similarity tile into a running top-k."""
  k = best_s.shape[1]
  threshold = best_s.min(axis=1)
  mask = sims > threshold[:, None]
  counts = np.count_nonzero(mask, axis=1)
  widest = int(counts.max()) if counts.size else 0
  if widest == 0:
    return best_s, best_i
  if widest > max(2 * k, sims.shape[1] // 4):
    # Early tiles: most entries beat the threshold, partition the tile.
    cols = _top_k_unsorted(sims, k)
    cand_s = np.take_along_axis(sims, cols, axis=1)
    cand_i = cols.astype(np.int64) + offset
  else:
    # Later tiles: gather the few entries above the threshold, padded.
    rows, cols = np.nonzero(mask)
    starts = np.cumsum(counts) - counts
    slots = np.arange(rows.size) - starts[rows]
    cand_s = np.full((sims.shape[0], widest), -np.inf, dtype=np.float32)
    cand_i = np.full((sims.shape[0], widest), -1, dtype=np.int64)
    cand_s[rows, slots] = sims[rows, cols]
    cand_i[rows, slots] = cols + offset
  all_s = np.concatenate([best_s, cand_s], axis=1)
  all_i = np.concatenate([best_i, cand_i], axis=1)
  keep = _top_k_unsorted(all_s, k)
  return np.take_along_axis(all_s, keep, axis=1), np.take_along_axis(all_i, keep, axis=1)


EXACT_BACKENDS = ("numpy", "faiss")


def exact_search(
  queries: Any,
  database: Any,
  k: int,
  *,
  query_block: int = 1024,
  db_block: int = 16384,
  backend: str = "numpy",
) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k by inner product, never forming the full similarity matrix.

  Args:
    queries: [num_queries, dim].
    database: [num_db, dim].
    k: neighbours per query.
    query_block: queries per tile (numpy backend).
    db_block: database rows per tile (numpy backend; peak tile = query_block x
      db_block float32, 64 MiB with the defaults).
    backend: 'numpy' (the tiles above) or 'faiss' (`faiss.knn`; module doc).

  Returns:
    (ids int64 [num_queries, k], scores float32 [num_queries, k]), best first.
  """
  q = as_matrix(queries, "queries")
  db = as_matrix(database, "database")
  if q.shape[1] != db.shape[1]:
    raise ValueError(f"queries have dim {q.shape[1]} but the database has dim {db.shape[1]}")
  if k < 1 or query_block < 1 or db_block < 1:
    raise ValueError(
      f"k, query_block and db_block must be >= 1, got {k}, {query_block}, {db_block}"
    )
  if backend not in EXACT_BACKENDS:
    raise ValueError(f"backend must be one of {EXACT_BACKENDS}, got {backend!r}")
  nq, n = q.shape[0], db.shape[0]
  kk = min(k, n)
  ids = np.full((nq, k), -1, dtype=np.int64)
  scores = np.full((nq, k), -np.inf, dtype=np.float32)
  if kk == 0 or nq == 0:
    return ids, scores
  if backend == "faiss":
    import faiss  # noqa: PLC0415 (search engine, loaded only when the faiss backend is used)

    found_scores, found_ids = faiss.knn(q, db, kk, metric=faiss.METRIC_INNER_PRODUCT)
    return sort_results(found_ids, found_scores, k)
  for q0 in range(0, nq, query_block):
    qb = q[q0 : q0 + query_block]
    best_s = np.full((qb.shape[0], kk), -np.inf, dtype=np.float32)
    best_i = np.full((qb.shape[0], kk), -1, dtype=np.int64)
    for d0 in range(0, n, db_block):
      sims = qb @ db[d0 : d0 + db_block].T
      best_s, best_i = _merge_block(best_s, best_i, sims, d0)
    sorted_i, sorted_s = sort_results(best_i, best_s, k)
    ids[q0 : q0 + qb.shape[0]] = sorted_i
    scores[q0 : q0 + qb.shape[0]] = sorted_s
  return ids, scores
