"""alpha query expansion and database-side augmentation (Radenovic et al., TPAMI 2018).

`alpha_query_expansion` (alpha-QE) and `database_side_augmentation`
(alpha-DBA): a descriptor is replaced by the L2-normalised sum of itself
(weight 1) and its top-n neighbours weighted by max(similarity, 0)^alpha.
Both are off by default in `search_with_expansion` (qe_n = dba_n = 0), an
exact search (exact_search.py, same result format) after them.
"""

import dataclasses
from typing import Any

import numpy as np

from dolg_tf.retrieval import exact_search
from dolg_tf.utils import arrays


@dataclasses.dataclass(frozen=True)
class QueryExpansionConfig:
  """alpha-QE and alpha-DBA of an evaluation (retrieval_config.RetrievalConfig.query_expansion).

  Attributes:
    qe_n: alpha-QE neighbours (0 = off).
    dba_n: alpha-DBA neighbours (0 = off).
    alpha: similarity exponent of both.
  """

  qe_n: int = 0
  dba_n: int = 0
  alpha: float = 3.0


def _weighted_neighbour_sum(
  base: np.ndarray,
  database: np.ndarray,
  ids: np.ndarray,
  weights: np.ndarray,
  chunk: int = 4096,
) -> np.ndarray:
  """Row-wise L2-normalised base + sum_j weights[:, j] * database[ids[:, j]]."""
  out = np.empty_like(base)
  for r0 in range(0, base.shape[0], chunk):
    sl = slice(r0, r0 + chunk)
    neighbours = database[np.maximum(ids[sl], 0)]  # [rows, n, dim]
    out[sl] = base[sl] + np.einsum("rn,rnd->rd", weights[sl], neighbours)
  return arrays.l2_normalize(out, axis=1)


def _alpha_weights(scores: np.ndarray, ids: np.ndarray, alpha: float) -> np.ndarray:
  w = np.power(np.maximum(scores, 0.0), alpha, dtype=np.float32)
  w[ids < 0] = 0.0
  return w


def alpha_query_expansion(
  queries: Any,
  database: Any,
  n: int,
  alpha: float = 3.0,
  *,
  neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
  """alpha-QE: q' = normalise(q + sum_{j<n} max(s_j, 0)^alpha x_j).

  The query counts with weight 1 (its self-similarity to the power alpha).

  Args:
    queries: [Q, dim] L2-normalised query descriptors.
    database: [N, dim] L2-normalised database descriptors.
    n: neighbours used (0 returns the normalised queries unchanged).
    alpha: similarity exponent (alpha = 0 gives average QE).
    neighbours: optional (ids, scores) of an earlier search (>= n columns);
      otherwise an exact search is run.

  Returns:
    [Q, dim] expanded, L2-normalised float32 queries.
  """
  q = exact_search.normalized_matrix(queries, "queries")
  if n <= 0:
    return q
  db = exact_search.as_matrix(database, "database")
  if neighbours is None:
    ids, scores = exact_search.exact_search(q, db, n)
  else:
    ids, scores = (np.asarray(a)[:, :n] for a in neighbours)
  return _weighted_neighbour_sum(q, db, ids, _alpha_weights(scores, ids, alpha))


def database_side_augmentation(
  database: Any, n: int, alpha: float = 3.0, *, db_block: int = 16384
) -> np.ndarray:
  """alpha-DBA: every database vector becomes its own alpha-QE over the database.

  x_i' = normalise(x_i + sum over the n nearest other database vectors of
  max(s, 0)^alpha x_j); x_i itself has weight 1.

  Args:
    database: [N, dim] L2-normalised descriptors.
    n: neighbours per item, excluding the item itself (0 = unchanged).
    alpha: similarity exponent.
    db_block: tile size of the all-pairs exact search.

  Returns:
    [N, dim] augmented, L2-normalised float32 descriptors.
  """
  db = exact_search.normalized_matrix(database, "database")
  if n <= 0:
    return db
  ids, scores = exact_search.exact_search(db, db, n + 1, db_block=db_block)
  # Drop each item's own entry (or, if a duplicate displaced it, the last one).
  own = ids == np.arange(db.shape[0])[:, None]
  own[~own.any(axis=1), -1] = True
  keep = ~own
  # Exactly one True per row in `own`, so each row keeps n entries.
  ids = ids[keep].reshape(db.shape[0], -1)[:, :n]
  scores = scores[keep].reshape(db.shape[0], -1)[:, :n]
  return _weighted_neighbour_sum(db, db, ids, _alpha_weights(scores, ids, alpha))


def search_with_expansion(
  queries: Any,
  database: Any,
  k: int,
  *,
  qe_n: int = 0,
  dba_n: int = 0,
  alpha: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Exact search with optional alpha-DBA then alpha-QE (both off by default).

  Args:
    queries: [Q, dim] descriptors (normalised here).
    database: [N, dim] descriptors (normalised here).
    k: results per query.
    qe_n: alpha-QE neighbours (0 = off).
    dba_n: alpha-DBA neighbours (0 = off).
    alpha: exponent for both.

  Returns:
    (ids, scores) against the (augmented) database.
  """
  db = exact_search.normalized_matrix(database, "database")
  if dba_n > 0:
    db = database_side_augmentation(db, dba_n, alpha)
  q = alpha_query_expansion(queries, db, qe_n, alpha)
  return exact_search.exact_search(q, db, k)
