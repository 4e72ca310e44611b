"""faiss indexes: IVF-Flat, IVF-PQ (optionally re-scored exactly) and HNSW, inner product.

faiss is imported inside the methods: it is loaded only when a faiss index is used.
"""

import os
from typing import Any

import numpy as np

from dolg_tf.retrieval import exact_search, search_index


class _FaissIndex(search_index.SearchIndex):
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
    return exact_search.sort_results(ids, scores, k)

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
    p["nlist"] = min(n, p["nlist"] or search_index.default_num_leaves(n))
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
