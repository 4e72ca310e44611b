"""Nearest-neighbour search over global descriptors (inner product).

* `exact_search`: brute force. backend 'numpy': tiled matrix products.
  Queries are processed in blocks of `query_block` rows and the database in
  blocks of `db_block` rows, so at most a [query_block, db_block] similarity
  tile exists at once; a running top-k per query is kept
  (`np.argpartition`, plus a threshold on the current k-th best score that
  skips most of a tile once the top-k has settled). backend 'faiss':
  `faiss.knn`, the same results up to float rounding. It is opt-in, not the
  default: on this 2-core machine it was 1.3x faster than the tiles for 1000
  queries against 1M x 512 (benchmarks/search_benchmark.py) and 2.8x for
  1000 queries against 300k random vectors, but 6x slower for 200 queries
  against 1M (the installed faiss-cpu wheel has no AVX2 build and falls back
  to its generic one).
* Indices behind one interface, all on inner product (= cosine similarity for
  L2-normalised descriptors):
    make_index('exact' | 'scann' | 'faiss_ivf_flat' | 'faiss_ivf_pq' |
               'faiss_hnsw', **params).build(db).search(queries, k)
  `.save(dir)` writes the index and a `index_meta.json`; `load_index(dir)`
  restores it. Search-time knobs (ScaNN leaves to search / reorder, faiss
  nprobe / k_factor / efSearch) can be changed with `.set_search_params`.
* `recall_at_k`: overlap of approximate and exact top-k.
* `alpha_query_expansion` (alpha-QE) and `database_side_augmentation`
  (alpha-DBA) after Radenovic et al. (TPAMI 2018): a descriptor is replaced by
  the L2-normalised sum of itself (weight 1) and its top-n neighbours weighted
  by max(similarity, 0)^alpha. Both are off by default in
  `search_with_expansion` (qe_n = dba_n = 0).

Every search returns `(ids, scores)`: ids int64 [num_queries, k], scores
float32 [num_queries, k], sorted by descending score (equal scores: lower id
first; which of several items tied at the k-th score is kept is unspecified).
When fewer than k results exist (k > database size, or an approximate index
found fewer) the rows are padded with id -1 and score -inf.
"""

import abc
import functools
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from dolg_tf.utils import arrays, cli, native_logs
from dolg_tf.utils import files as file_utils

META_FILENAME = "index_meta.json"
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- helpers


def _as_matrix(x: Any, name: str) -> np.ndarray:
  arr = np.ascontiguousarray(x, dtype=np.float32)
  if arr.ndim != 2:
    raise ValueError(f"{name} must be a 2-D [n, dim] array, got shape {arr.shape}")
  return arr


def _normalized_matrix(x: Any, name: str) -> np.ndarray:
  """`x` as a float32 [n, dim] matrix with L2-normalised rows (zero rows stay zero)."""
  return arrays.l2_normalize(_as_matrix(x, name), axis=1)


def _sort_results(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
  q = _as_matrix(queries, "queries")
  db = _as_matrix(database, "database")
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
    return _sort_results(found_ids, found_scores, k)
  for q0 in range(0, nq, query_block):
    qb = q[q0 : q0 + query_block]
    best_s = np.full((qb.shape[0], kk), -np.inf, dtype=np.float32)
    best_i = np.full((qb.shape[0], kk), -1, dtype=np.int64)
    for d0 in range(0, n, db_block):
      sims = qb @ db[d0 : d0 + db_block].T
      best_s, best_i = _merge_block(best_s, best_i, sims, d0)
    sorted_i, sorted_s = _sort_results(best_i, best_s, k)
    ids[q0 : q0 + qb.shape[0]] = sorted_i
    scores[q0 : q0 + qb.shape[0]] = sorted_s
  return ids, scores


def recall_at_k(approx_ids: Any, exact_ids: Any, k: int) -> float:
  """Mean fraction of the exact top-k found in the approximate top-k.

  Args:
    approx_ids: [num_queries, >= k] ids from an approximate search.
    exact_ids: [num_queries, >= k] ids from exact search (-1 = padding,
      ignored).
    k: cut-off.

  Returns:
    Recall@k averaged over queries (queries with no exact result are
    skipped; NaN if none remain).
  """
  approx = np.asarray(approx_ids)[:, :k]
  exact = np.asarray(exact_ids)[:, :k]
  if approx.shape[0] != exact.shape[0]:
    raise ValueError(f"approx_ids has {approx.shape[0]} rows, exact_ids {exact.shape[0]}")
  recalls = []
  for a, e in zip(approx, exact):
    e = e[e >= 0]
    if e.size:
      recalls.append(np.intersect1d(a[a >= 0], e).size / e.size)
  return float(np.mean(recalls)) if recalls else float("nan")


# ----------------------------------------------------------------------------- indices


def default_num_leaves(num_db: int) -> int:
  """Partitions for a tree / IVF index: about sqrt(num_db)."""
  return max(1, min(num_db, int(round(math.sqrt(num_db)))))


def _dir_bytes(directory: str) -> int:
  return sum(
    os.path.getsize(os.path.join(root, name))
    for root, _, names in os.walk(directory)
    for name in names
  )


class SearchIndex(abc.ABC):
  """Common interface: build(db) -> search(queries, k) -> save(dir)."""

  kind: str = ""
  # Parameter name -> default; subclasses extend.
  DEFAULTS: Mapping[str, Any] = {}
  # Parameters that may change after build (set_search_params).
  SEARCH_PARAMS: frozenset = frozenset()

  def __init__(self, **params: Any):
    unknown = sorted(set(params) - set(self.DEFAULTS))
    if unknown:
      raise ValueError(
        f"unknown parameter(s) {unknown} for index '{self.kind}'; known: {sorted(self.DEFAULTS)}"
      )
    self.params = {**self.DEFAULTS, **params}
    self.size = 0
    self.dim = 0

  @abc.abstractmethod
  def build(self, database: Any) -> "SearchIndex":
    """Indexes [num_db, dim] float32 descriptors; returns self."""

  @abc.abstractmethod
  def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (ids int64 [Q, k], scores float32 [Q, k]), best first."""

  @abc.abstractmethod
  def _save_payload(self, directory: str) -> None:
    """Writes the index files into an existing empty directory."""

  @abc.abstractmethod
  def _load_payload(self, directory: str) -> None:
    """Restores the index from `directory` (params, size, dim already set)."""

  def memory_bytes(self) -> int:
    """Size of the serialised index (a proxy for its memory), in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
      self._save_payload(tmp)
      return _dir_bytes(tmp)

  def set_search_params(self, **params: Any) -> "SearchIndex":
    """Changes search-time parameters without rebuilding; returns self."""
    bad = sorted(set(params) - set(self.SEARCH_PARAMS))
    if bad:
      raise ValueError(
        f"{bad} cannot be set after build for index '{self.kind}'; "
        f"search-time parameters: {sorted(self.SEARCH_PARAMS)}"
      )
    self.params.update(params)
    return self

  def _check_built(self, queries: Any, k: int) -> np.ndarray:
    if not self.size:
      raise ValueError(f"index '{self.kind}' is empty: call build() first")
    q = _as_matrix(queries, "queries")
    if q.shape[1] != self.dim:
      raise ValueError(f"queries have dim {q.shape[1]} but index '{self.kind}' has dim {self.dim}")
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    return q

  def _check_database(self, database: Any) -> np.ndarray:
    db = _as_matrix(database, "database")
    if db.shape[0] == 0:
      raise ValueError("database is empty")
    self.size, self.dim = db.shape
    return db

  def save(self, directory: str) -> None:
    """Writes the index and `index_meta.json` to `directory` (replaced whole)."""
    if not self.size:
      raise ValueError(f"index '{self.kind}' is empty: nothing to save to {directory}")
    meta = {
      "format_version": _FORMAT_VERSION,
      "kind": self.kind,
      "params": self.params,
      "size": self.size,
      "dim": self.dim,
    }
    final_dir = os.path.abspath(directory)

    def write(tmp):
      self._save_payload(tmp)
      self._finalize_payload(tmp, final_dir)
      with open(os.path.join(tmp, META_FILENAME), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)

    file_utils.atomic_write_dir(directory, write)

  def _finalize_payload(self, tmp_dir: str, final_dir: str) -> None:
    """Hook to fix paths that point into the temporary folder."""
    del tmp_dir, final_dir


class ExactIndex(SearchIndex):
  """Brute force (`exact_search`, params query_block, db_block, backend); float32 database."""

  kind = "exact"
  DEFAULTS = {"query_block": 1024, "db_block": 16384, "backend": "numpy"}
  SEARCH_PARAMS = frozenset(DEFAULTS)

  def __init__(self, **params: Any):
    super().__init__(**params)
    self._db = None

  def build(self, database: Any) -> "ExactIndex":
    self._db = self._check_database(database)
    return self

  def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = self._check_built(queries, k)
    p = self.params
    return exact_search(
      q, self._db, k, query_block=p["query_block"], db_block=p["db_block"], backend=p["backend"]
    )

  def memory_bytes(self) -> int:
    return int(self._db.nbytes) if self._db is not None else 0

  def _save_payload(self, directory: str) -> None:
    np.save(os.path.join(directory, "database.npy"), self._db)

  def _load_payload(self, directory: str) -> None:
    self._db = np.load(os.path.join(directory, "database.npy"))


class ScannIndex(SearchIndex):
  """ScaNN: k-means tree + anisotropic asymmetric hashing + exact reorder.

  Parameters (None = chosen from the database size at build):
    num_leaves: tree partitions, default ~sqrt(num_db); <= 1 disables the tree.
    num_leaves_to_search: partitions scanned per query, default num_leaves/10.
    reorder: candidates re-scored exactly in float32 (0 = no reordering; at
      search time max(reorder, k) is used), default 250.
    dimensions_per_block: AH dimensions per 4-bit code (lut16), default 2.
    anisotropic_quantization_threshold: AH eta threshold, default 0.2.
    training_sample_size: points used to train the tree and AH codebooks.
    num_threads: search threads (0 = ScaNN's default).
    soar_lambda: SOAR spilling (None = off): every point is also stored in a
      second partition chosen with orthogonality-amplified residuals (this
      lambda), so fewer leaves reach the same recall; the AH codes, and so
      the index, grow accordingly.
    overretrieve_factor: with SOAR, how many more candidates the partitions
      return before de-duplication (None = ScaNN's default).
    spherical: spherical k-means for the tree (centres normalised).
  """

  kind = "scann"
  DEFAULTS = {
    "num_leaves": None,
    "num_leaves_to_search": None,
    "reorder": 250,
    "dimensions_per_block": 2,
    "anisotropic_quantization_threshold": 0.2,
    "training_sample_size": 100000,
    "num_threads": 0,
    "soar_lambda": None,
    "overretrieve_factor": None,
    "spherical": False,
  }
  SEARCH_PARAMS = frozenset({"num_leaves_to_search", "reorder"})

  def __init__(self, **params: Any):
    super().__init__(**params)
    self._searcher = None

  def build(self, database: Any) -> "ScannIndex":
    scann_ops_pybind = _scann_numpy_api()
    db = self._check_database(database)
    n = db.shape[0]
    p = self.params
    num_leaves = min(n, p["num_leaves"] or default_num_leaves(n))
    to_search = p["num_leaves_to_search"] or max(1, int(round(num_leaves / 10)))
    p["num_leaves"] = num_leaves
    p["num_leaves_to_search"] = min(to_search, num_leaves)
    sample = min(n, p["training_sample_size"])
    builder = scann_ops_pybind.builder(db, 10, "dot_product")
    if num_leaves > 1:
      builder = builder.tree(
        num_leaves=num_leaves,
        num_leaves_to_search=p["num_leaves_to_search"],
        training_sample_size=sample,
        spherical=bool(p["spherical"]),
        soar_lambda=p["soar_lambda"],
        overretrieve_factor=p["overretrieve_factor"],
      )
    builder = builder.score_ah(
      p["dimensions_per_block"],
      anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"],
      training_sample_size=sample,
    )
    if p["reorder"]:
      builder = builder.reorder(p["reorder"])
    with native_logs.quiet_native_info():
      self._searcher = builder.build()
    self._set_threads()
    return self

  def _set_threads(self) -> None:
    if self.params["num_threads"]:
      self._searcher.set_num_threads(self.params["num_threads"])

  def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = self._check_built(queries, k)
    p = self.params
    pre = max(p["reorder"], k) if p["reorder"] else k
    leaves = min(p["num_leaves_to_search"], p["num_leaves"]) if p["num_leaves"] > 1 else None
    ids, dists = self._searcher.search_batched_parallel(
      q, final_num_neighbors=k, pre_reorder_num_neighbors=pre, leaves_to_search=leaves
    )
    # ScaNN returns uint32 ids and, for dot_product, the similarity itself.
    ids = np.asarray(ids).astype(np.int64)
    return _sort_results(ids, np.asarray(dists, dtype=np.float32), k)

  def _save_payload(self, directory: str) -> None:
    self._searcher.serialize(directory)

  def _finalize_payload(self, tmp_dir: str, final_dir: str) -> None:
    _rewrite_scann_asset_paths(tmp_dir, final_dir)

  def _load_payload(self, directory: str) -> None:
    scann_ops_pybind = _scann_numpy_api()
    assets = _rewrite_scann_asset_paths(directory, os.path.abspath(directory), write=False)
    with native_logs.quiet_native_info():
      self._searcher = scann_ops_pybind.ScannSearcher(
        scann_ops_pybind.scann_pybind.ScannNumpy(directory, assets)
      )
    self._set_threads()


@functools.cache
def _scann_numpy_api():
  """ScaNN's numpy API (scann_ops_pybind), loaded without ScaNN's TensorFlow ops.

  `import scann` also loads scann_ops, a TF op library built against one
  TensorFlow release (scann 1.4.2's fails to load on TF 2.21), and dolg_tf never
  uses it. So the module is imported under a bare `scann` package whose
  `__init__` does not run, and every `scann` module this import added is taken
  out of sys.modules again: a later `import scann` of the user's is a fresh,
  complete import, as if dolg_tf had not been there.
  """
  if "scann" in sys.modules:  # The user's complete ScaNN: use its module.
    return importlib.import_module("scann.scann_ops.py.scann_ops_pybind")
  spec = importlib.util.find_spec("scann")
  if spec is None:
    raise cli.UserError("a 'scann' index needs the scann package (pip install scann)")
  before = set(sys.modules)
  sys.modules["scann"] = importlib.util.module_from_spec(spec)
  try:
    return importlib.import_module("scann.scann_ops.py.scann_ops_pybind")
  finally:
    for name in set(sys.modules) - before:
      if name == "scann" or name.startswith("scann."):
        del sys.modules[name]


def _rewrite_scann_asset_paths(directory: str, target_dir: str, write: bool = True) -> str:
  """Points ScaNN's absolute asset paths at `target_dir` (folder may move)."""
  path = os.path.join(directory, "scann_assets.pbtxt")
  if not os.path.isfile(path):
    raise OSError(f"{path}: ScaNN assets file not found")
  with open(path) as f:
    text = f.read()
  text = re.sub(
    r'asset_path: "([^"]*)"',
    lambda m: f'asset_path: "{os.path.join(target_dir, os.path.basename(m.group(1)))}"',
    text,
  )
  if write:
    with open(path, "w") as f:
      f.write(text)
  return text


class _FaissIndex(SearchIndex):
  """Shared faiss plumbing (inner-product metric, factory strings)."""

  def __init__(self, **params: Any):
    super().__init__(**params)
    self._index = None

  def _factory(self, n: int, dim: int) -> str:
    raise NotImplementedError

  def _train_size(self, n: int) -> int:
    return n

  def build(self, database: Any) -> "_FaissIndex":
    import faiss  # noqa: PLC0415 (search engine, loaded only when a faiss index is used)

    db = self._check_database(database)
    n, dim = db.shape
    if self.params.get("num_threads"):
      faiss.omp_set_num_threads(self.params["num_threads"])
    index = faiss.index_factory(dim, self._factory(n, dim), faiss.METRIC_INNER_PRODUCT)
    self._before_add(index)
    if not index.is_trained:
      m = min(n, self._train_size(n))
      rng = np.random.default_rng(0)
      sample = db if m >= n else db[np.sort(rng.choice(n, size=m, replace=False))]
      index.train(sample)
    index.add(db)
    self._index = index
    self._apply_search_params()
    return self

  def _before_add(self, index: Any) -> None:
    del index

  def _apply_search_params(self) -> None:
    raise NotImplementedError

  def set_search_params(self, **params: Any) -> "_FaissIndex":
    super().set_search_params(**params)
    if self._index is not None:
      self._apply_search_params()
    return self

  def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = self._check_built(queries, k)
    scores, ids = self._index.search(q, k)
    return _sort_results(ids, scores, k)

  def memory_bytes(self) -> int:
    import faiss  # noqa: PLC0415 (search engine, loaded only when a faiss index is used)

    return int(faiss.serialize_index(self._index).nbytes)

  def _save_payload(self, directory: str) -> None:
    import faiss  # noqa: PLC0415 (search engine, loaded only when a faiss index is used)

    faiss.write_index(self._index, os.path.join(directory, "faiss.index"))

  def _load_payload(self, directory: str) -> None:
    import faiss  # noqa: PLC0415 (search engine, loaded only when a faiss index is used)

    self._index = faiss.read_index(os.path.join(directory, "faiss.index"))
    if self.params.get("num_threads"):
      faiss.omp_set_num_threads(self.params["num_threads"])
    self._apply_search_params()


class _FaissIvfIndex(_FaissIndex):
  """IVF parameters: nlist (default ~sqrt(N)), nprobe (default nlist/10).

  coarse_hnsw_m > 0 replaces the flat coarse quantiser (all nlist centroids
  scored per query) by an HNSW graph over the centroids with that many links
  ("IVF{nlist}_HNSW{m}"), which makes large nlist (tens of thousands of
  lists) cheap to probe; quantizer_ef_search is its efSearch (None: max(64,
  2 * nprobe), at least nprobe so that nprobe lists are found).
  """

  def _resolve_ivf(self, n: int) -> int:
    p = self.params
    p["nlist"] = min(n, p["nlist"] or default_num_leaves(n))
    p["nprobe"] = min(p["nlist"], p["nprobe"] or max(1, int(round(p["nlist"] / 10))))
    return p["nlist"]

  def _ivf_prefix(self, n: int) -> str:
    nlist = self._resolve_ivf(n)
    m = self.params.get("coarse_hnsw_m") or 0
    return f"IVF{nlist}_HNSW{m}" if m else f"IVF{nlist}"

  def _train_size(self, n: int) -> int:
    # faiss asks for >= 39 points per centroid; 64 keeps k-means quick.
    return self.params["train_size"] or max(64 * self.params["nlist"], 10000)

  def _apply_search_params(self) -> None:
    import faiss  # noqa: PLC0415 (search engine, loaded only when a faiss index is used)

    ivf = faiss.extract_index_ivf(self._index)
    ivf.nprobe = int(self.params["nprobe"])
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
      ef = self.params.get("quantizer_ef_search") or max(64, 2 * ivf.nprobe)
      quantizer.hnsw.efSearch = int(max(ef, ivf.nprobe))


class FaissIvfFlatIndex(_FaissIvfIndex):
  """faiss IndexIVFFlat (inner product): exact scores inside the probed lists.

  Parameters: nlist (default ~sqrt(num_db)), nprobe (default nlist / 10),
  train_size (k-means sample, default max(64 * nlist, 10000)), num_threads (faiss OpenMP
  threads, process-wide; 0 = faiss' default), coarse_hnsw_m and
  quantizer_ef_search (an HNSW coarse quantiser, see _FaissIvfIndex).
  """

  kind = "faiss_ivf_flat"
  DEFAULTS = {
    "nlist": None,
    "nprobe": None,
    "train_size": None,
    "num_threads": 0,
    "coarse_hnsw_m": 0,
    "quantizer_ef_search": None,
  }
  SEARCH_PARAMS = frozenset({"nprobe", "quantizer_ef_search"})

  def _factory(self, n: int, dim: int) -> str:
    return f"{self._ivf_prefix(n)},Flat"


class FaissIvfPqIndex(_FaissIvfIndex):
  """faiss IVF-PQ (inner product), optionally re-ranked exactly.

  Parameters: nlist, nprobe as IVF; nbits per sub-quantizer code (default 4);
  fast_scan (default True, needs nbits = 4): faiss' SIMD "PQ{m}x4fs" layout,
  much faster to train and to search than classic 8-bit PQ; m sub-quantizers
  (default dim / nbits, i.e. dim / 8 bytes per vector; must divide dim);
  refine_k_factor > 0 wraps the index in IndexRefineFlat, which re-scores
  refine_k_factor * k candidates with the stored float32 vectors (more
  memory, higher recall; changeable after build only if built with it);
  coarse_hnsw_m and quantizer_ef_search as IVF (see _FaissIvfIndex).
  """

  kind = "faiss_ivf_pq"
  DEFAULTS = {
    "nlist": None,
    "nprobe": None,
    "m": None,
    "nbits": 4,
    "fast_scan": True,
    "refine_k_factor": 0,
    "train_size": None,
    "num_threads": 0,
    "coarse_hnsw_m": 0,
    "quantizer_ef_search": None,
  }
  SEARCH_PARAMS = frozenset({"nprobe", "refine_k_factor", "quantizer_ef_search"})

  def _factory(self, n: int, dim: int) -> str:
    p = self.params
    prefix = self._ivf_prefix(n)
    if p["fast_scan"] and p["nbits"] != 4:
      raise ValueError(f"faiss_ivf_pq: fast_scan needs nbits=4, got nbits={p['nbits']}")
    p["m"] = p["m"] or max(1, dim // p["nbits"])
    if dim % p["m"]:
      raise ValueError(f"faiss_ivf_pq: m={p['m']} must divide the dimension {dim}")
    codes = f"PQ{p['m']}x{p['nbits']}" + ("fs" if p["fast_scan"] else "")
    refine = ",RFlat" if p["refine_k_factor"] else ""
    return f"{prefix},{codes}{refine}"

  def _train_size(self, n: int) -> int:
    # IVF: 64 points per list; PQ: 64 per code word (classic 8-bit PQ trains slowly).
    return self.params["train_size"] or max(
      64 * self.params["nlist"], 64 * 2 ** self.params["nbits"]
    )

  def _apply_search_params(self) -> None:
    import faiss  # noqa: PLC0415 (search engine, loaded only when a faiss index is used)

    super()._apply_search_params()
    outer = faiss.downcast_index(self._index)
    if isinstance(outer, faiss.IndexRefine):
      outer.k_factor = float(max(1, self.params["refine_k_factor"]))


class FaissHnswIndex(_FaissIndex):
  """faiss IndexHNSWFlat (inner product): m links, ef_construction, ef_search."""

  kind = "faiss_hnsw"
  DEFAULTS = {"m": 32, "ef_construction": 40, "ef_search": 64, "num_threads": 0}
  SEARCH_PARAMS = frozenset({"ef_search"})

  def _factory(self, n: int, dim: int) -> str:
    return f"HNSW{self.params['m']},Flat"

  def _before_add(self, index: Any) -> None:
    import faiss  # noqa: PLC0415 (search engine, loaded only when a faiss index is used)

    faiss.downcast_index(index).hnsw.efConstruction = int(self.params["ef_construction"])

  def _apply_search_params(self) -> None:
    import faiss  # noqa: PLC0415 (search engine, loaded only when a faiss index is used)

    faiss.downcast_index(self._index).hnsw.efSearch = int(self.params["ef_search"])


INDEX_KINDS = {
  cls.kind: cls
  for cls in (ExactIndex, ScannIndex, FaissIvfFlatIndex, FaissIvfPqIndex, FaissHnswIndex)
}


def make_index(kind: str, **params: Any) -> SearchIndex:
  """Creates an unbuilt index of one of `INDEX_KINDS`.

  Args:
    kind: 'exact', 'scann', 'faiss_ivf_flat', 'faiss_ivf_pq' or 'faiss_hnsw'.
    **params: that kind's parameters (see its class docstring).

  Returns:
    A `SearchIndex`; call `.build(database)` next.

  Raises:
    ValueError: unknown kind or parameter.
  """
  if kind not in INDEX_KINDS:
    raise ValueError(f"unknown index kind '{kind}', expected one of {sorted(INDEX_KINDS)}")
  return INDEX_KINDS[kind](**params)


def load_index(directory: str) -> SearchIndex:
  """Restores an index written by `SearchIndex.save`.

  Raises:
    IOError: no index_meta.json in `directory`.
    ValueError: malformed metadata.
  """
  meta_path = os.path.join(directory, META_FILENAME)
  if not os.path.isfile(meta_path):
    raise OSError(f"{meta_path}: not found, {directory} is not a saved index")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    kind, params = meta["kind"], meta["params"]
    size, dim = int(meta["size"]), int(meta["dim"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{meta_path}: malformed index metadata ({e})") from e
  if kind not in INDEX_KINDS:
    raise ValueError(f"{meta_path}: unknown index kind '{kind}'")
  try:
    index = INDEX_KINDS[kind](**params)
  except ValueError as e:
    raise ValueError(f"{meta_path}: {e}") from e
  index.size, index.dim = size, dim
  index._load_payload(directory)  # pylint: disable=protected-access
  return index


# ----------------------------------------------------------------------------- expansion


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
  q = _normalized_matrix(queries, "queries")
  if n <= 0:
    return q
  db = _as_matrix(database, "database")
  if neighbours is None:
    ids, scores = exact_search(q, db, n)
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
  db = _normalized_matrix(database, "database")
  if n <= 0:
    return db
  ids, scores = exact_search(db, db, n + 1, db_block=db_block)
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
  db = _normalized_matrix(database, "database")
  if dba_n > 0:
    db = database_side_augmentation(db, dba_n, alpha)
  q = alpha_query_expansion(queries, db, qe_n, alpha)
  return exact_search(q, db, k)
