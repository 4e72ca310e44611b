"""Search indexes behind one interface, by kind, and how close an approximate one gets.

    make_index('exact' | 'scann' | 'faiss_ivf_flat' | 'faiss_ivf_pq' |
               'faiss_hnsw', **params).build(db).search(queries, k)

All score by inner product (= cosine similarity for L2-normalised
descriptors); the interface and the saved-folder format are search_index.py's.
`.save(dir)` writes the index and an `index_meta.json`; `load_index(dir)`
restores it. Search-time knobs (ScaNN leaves to search / reorder, faiss
nprobe / k_factor / efSearch) can be changed with `.set_search_params`.
`recall_at_k`: overlap of approximate and exact top-k.
"""

import json
import os
from typing import Any

import numpy as np

from dolg_tf.retrieval import faiss_indexes, scann_index, search_index

INDEX_KINDS = {
  cls.kind: cls
  for cls in (
    search_index.ExactIndex,
    scann_index.ScannIndex,
    faiss_indexes.FaissIvfFlatIndex,
    faiss_indexes.FaissIvfPqIndex,
    faiss_indexes.FaissHnswIndex,
  )
}


def make_index(kind: str, **params: Any) -> search_index.SearchIndex:
  """Creates an unbuilt index of one of `INDEX_KINDS`.

  Args:
    kind: 'exact', 'scann', 'faiss_ivf_flat', 'faiss_ivf_pq' or 'faiss_hnsw'.
    **params: that kind's parameters (see its class docstring).

  Returns:
    A `search_index.SearchIndex`; call `.build(database)` next.

  Raises:
    ValueError: unknown kind or parameter.
  """
  if kind not in INDEX_KINDS:
    raise ValueError(f"unknown index kind '{kind}', expected one of {sorted(INDEX_KINDS)}")
  return INDEX_KINDS[kind](**params)


def load_index(directory: str) -> search_index.SearchIndex:
  """Restores an index written by `search_index.SearchIndex.save`.

  Raises:
    IOError: no index_meta.json in `directory`.
    ValueError: malformed metadata.
  """
  meta_path = os.path.join(directory, search_index.META_FILENAME)
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
