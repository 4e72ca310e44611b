"""Reading extracted descriptors back (either output format of descriptor_files.py).

`read_descriptors` reads a folder or glob as (ids, matrix), refusing
(ValueError naming the file, and for a shard the image id) any descriptor that
cannot be ranked (descriptor_files.descriptor_problem); `list_ids` and
`descriptor_dim` answer without reading the descriptors; a request for ids
without a descriptor raises MissingDescriptorsError, counting them and naming
the first few.
"""

import glob
import os
import zipfile
from collections.abc import Sequence

import numpy as np

from dolg_tf.io import datum_io, descriptor_files
from dolg_tf.io.descriptor_files import DEFAULT_SUFFIX

# Ids named in a "missing descriptors" message (then "...").
MAX_NAMED_IDS = 5


class MissingDescriptorsError(KeyError, ValueError):
  """Requested ids without a descriptor; `missing` lists them, str() is the message.

  A KeyError (as before) and a ValueError (bad input); unlike a plain
  KeyError, str() does not quote the message.
  """

  def __init__(self, message: str, missing: Sequence[str] = ()):
    super().__init__(message)
    self.missing = list(missing)

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def missing_message(missing: Sequence[str], total: int, what: str, source: str) -> str:
  """'12 of 70 query descriptors missing in <source>: a, b, c, d, e, ...' (first few ids)."""
  shown = ", ".join(missing[:MAX_NAMED_IDS]) + (", ..." if len(missing) > MAX_NAMED_IDS else "")
  return f"{len(missing)} of {total} {what} missing in {source}: {shown}"


def _missing_error(missing: Sequence[str], total: int, source: str) -> MissingDescriptorsError:
  return MissingDescriptorsError(missing_message(missing, total, "descriptors", source), missing)


def _refuse_bad_rows(block: np.ndarray, path: str, block_ids: Sequence[str]) -> None:
  """Raises ValueError naming the shard and the first image whose row cannot be ranked."""
  non_finite = np.flatnonzero(~np.isfinite(block).all(axis=1))
  if non_finite.size:
    raise ValueError(
      f"{path}: non-finite descriptor (NaN or inf) for image {block_ids[non_finite[0]]} "
      f"({non_finite.size} of {len(block_ids)} rows)"
    )
  bad = descriptor_files.bad_rows(block)
  if bad.size:
    raise ValueError(
      f"{path}: {descriptor_files.row_problem(block[bad[0]])} for image {block_ids[bad[0]]} "
      f"({bad.size} of {len(block_ids)} rows unusable)"
    )


def _select(all_ids: list[str], matrix: np.ndarray, ids: Sequence[str] | None, source: str):
  if ids is None:
    return all_ids, matrix
  position = {image_id: i for i, image_id in enumerate(all_ids)}
  missing = [i for i in ids if i not in position]
  if missing:
    raise _missing_error(missing, len(ids), source)
  rows = np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))
  return list(ids), matrix[rows]


def _shard_headers(paths: list[str]) -> tuple[list[str], list[int], int | None]:
  """(all ids, ids per shard, D) from the shards' ids and headers (no descriptors read)."""
  all_ids, counts, dim = [], [], None
  for path in paths:
    shard_ids, _, shape = descriptor_files.read_shard(path, ids_only=True)
    if dim is not None and shape[1] != dim:
      raise ValueError(f"{path}: {shape[1]}-D descriptors, earlier shards have {dim}")
    dim = int(shape[1])
    all_ids.extend(shard_ids)
    counts.append(len(shard_ids))
  return all_ids, counts, dim


def _read_shards(paths: list[str], ids, source: str):
  # Sizes first (headers only), so the matrix is allocated once: no
  # concatenation copy of a multi-GB collection.
  all_ids, counts, dim = _shard_headers(paths)
  if ids is not None:
    known = set(all_ids)
    missing = [i for i in ids if i not in known]
    if missing:  # before any descriptor is read
      raise _missing_error(missing, len(ids), source)
  matrix = np.empty([len(all_ids), dim or 0], np.float32)
  row = 0
  for path, count in zip(paths, counts):
    try:
      with np.load(path, allow_pickle=False) as data:
        block = np.asarray(data["descriptors"], dtype=np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      raise OSError(f"{path}: not a descriptor shard ({e})") from e
    if block.shape != (count, matrix.shape[1]):
      raise OSError(f"{path}: descriptors of shape {block.shape}, its header said {count} rows")
    _refuse_bad_rows(block, path, all_ids[row : row + count])
    matrix[row : row + count] = block
    row += count
  return _select(all_ids, matrix, ids, source)


def _per_image_ids(paths: list[str], suffix: str) -> dict[str, str]:
  """{id: path} of per-image descriptor files."""

  def file_id(path):
    name = os.path.basename(path)
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else os.path.splitext(name)[0]

  return {file_id(p): p for p in paths}


def _read_per_image_file(path: str) -> np.ndarray:
  """The float32 [D] descriptor of a DatumProto file; ValueError naming it if unusable."""
  descriptor = datum_io.read_from_file(path)
  problem = descriptor_files.descriptor_problem(descriptor)
  if problem is not None:
    raise ValueError(f"{path}: {problem}")
  return descriptor.astype(np.float32)


def _read_per_image(paths: list[str], ids, suffix: str, source: str):
  by_id = _per_image_ids(paths, suffix)
  wanted = sorted(by_id) if ids is None else list(ids)
  missing = [i for i in wanted if i not in by_id]
  if missing:
    raise _missing_error(missing, len(wanted), source)
  matrix = None
  for row, image_id in enumerate(wanted):
    descriptor = _read_per_image_file(by_id[image_id])
    if matrix is None:
      matrix = np.empty([len(wanted), descriptor.shape[0]], np.float32)
    elif descriptor.shape[0] != matrix.shape[1]:
      raise ValueError(
        f"{by_id[image_id]}: {descriptor.shape[0]}-D descriptor, others are {matrix.shape[1]}-D"
      )
    matrix[row] = descriptor
  return wanted, matrix if matrix is not None else np.zeros([0, 0], np.float32)


def _source_files(source: str, suffix: str) -> tuple[bool, list[str]]:
  """(is_shards, paths) of a folder or glob (see read_descriptors)."""
  if os.path.isdir(source):
    shards = descriptor_files.shard_files(source)
    if shards:
      return True, shards
    paths = sorted(
      e.path
      for e in os.scandir(source)
      if e.name.endswith(suffix) and not e.name.startswith(".") and e.is_file()
    )
    return False, paths
  paths = sorted(p for p in glob.glob(source) if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f"{source}: no descriptor files found")
  return all(p.endswith(".npz") for p in paths), paths


def list_ids(source: str, suffix: str = DEFAULT_SUFFIX) -> list[str]:
  """The ids `read_descriptors(source)` would return, without reading any descriptor.

  Raises:
    FileNotFoundError: `source` matches nothing.
    IOError: a corrupt shard (named).
  """
  is_shards, paths = _source_files(source, suffix)
  if is_shards:
    return _shard_headers(paths)[0]
  return sorted(_per_image_ids(paths, suffix))


def descriptor_dim(
  source: str, ids: Sequence[str] | None = None, suffix: str = DEFAULT_SUFFIX
) -> int | None:
  """D of the descriptors in `source`, reading one descriptor at most.

  Args:
    source: as in `read_descriptors`.
    ids: per-image files: D is that of the first of these ids found (of the
      first file when None); shards: D of their headers.
    suffix: per-image file suffix.

  Returns:
    D, or None when `source` holds no (such) descriptor.

  Raises:
    FileNotFoundError: `source` matches nothing.
    ValueError / IOError: inconsistent or corrupt files (named).
  """
  is_shards, paths = _source_files(source, suffix)
  if is_shards:
    return _shard_headers(paths)[2]
  if ids is not None:
    by_id = _per_image_ids(paths, suffix)
    paths = [by_id[i] for i in ids if i in by_id][:1]
  return int(_read_per_image_file(paths[0]).shape[0]) if paths else None


def read_descriptors(
  source: str, ids: Sequence[str] | None = None, suffix: str = DEFAULT_SUFFIX
) -> tuple[list[str], np.ndarray]:
  """Reads descriptors written by `run_extraction`, in either output format.

  Args:
    source: an output folder (its shards if it has any, else its
      `*<suffix>` files), or a glob of shard (`.npz`) or per-image files.
    ids: if given, the rows returned, in this order.
    suffix: per-image file suffix, stripped to get ids.

  Returns:
    (ids, float32 [N, D]). Without `ids`: shard contents in shard order, or
    per-image files sorted by id.

  Raises:
    FileNotFoundError: `source` matches nothing.
    MissingDescriptorsError (a KeyError and a ValueError): some requested ids
      are absent (counted and the first few named, before any descriptor is
      read).
    ValueError / IOError: inconsistent, truncated or corrupt files, or a
      descriptor retrieval cannot rank (`descriptor_problem`: not a 1-D [D]
      vector, NaN / inf, all zero, a float32 L2 norm that overflows or is
      under MIN_DESCRIPTOR_NORM); the file named, and for a shard the image id.
  """
  is_shards, paths = _source_files(source, suffix)
  if is_shards:
    return _read_shards(paths, ids, source)
  return _read_per_image(paths, ids, suffix, source)
