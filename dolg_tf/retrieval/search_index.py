"""The interface of every search index, its saved-folder format, and the exact index.

    index = SomeIndex(**params).build(database)    # [num_db, dim] float32
    ids, scores = index.search(queries, k)         # as exact_search.exact_search
    index.save(directory)                          # + index_meta.json

All indexes score by inner product (= cosine similarity for L2-normalised
descriptors). A saved index is a folder holding the backend's files and
`index_meta.json` (format version, kind, parameters, size, dim); indexes.py
maps kinds to classes and reads such folders back (`indexes.load_index`).
Search-time knobs can be changed after build with `.set_search_params`.
"""

import abc
import json
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from dolg_tf.retrieval import exact_search
from dolg_tf.utils import files as file_utils

META_FILENAME = "index_meta.json"
FORMAT_VERSION = 1


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
    q = exact_search.as_matrix(queries, "queries")
    if q.shape[1] != self.dim:
      raise ValueError(f"queries have dim {q.shape[1]} but index '{self.kind}' has dim {self.dim}")
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    return q

  def _check_database(self, database: Any) -> np.ndarray:
    db = exact_search.as_matrix(database, "database")
    if db.shape[0] == 0:
      raise ValueError("database is empty")
    self.size, self.dim = db.shape
    return db

  def save(self, directory: str) -> None:
    """Writes the index and `index_meta.json` to `directory` (replaced whole)."""
    if not self.size:
      raise ValueError(f"index '{self.kind}' is empty: nothing to save to {directory}")
    meta = {
      "format_version": FORMAT_VERSION,
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
    return exact_search.exact_search(
      q, self._db, k, query_block=p["query_block"], db_block=p["db_block"], backend=p["backend"]
    )

  def memory_bytes(self) -> int:
    return int(self._db.nbytes) if self._db is not None else 0

  def _save_payload(self, directory: str) -> None:
    np.save(os.path.join(directory, "database.npy"), self._db)

  def _load_payload(self, directory: str) -> None:
    self._db = np.load(os.path.join(directory, "database.npy"))
