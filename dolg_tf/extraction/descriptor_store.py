"""Where extracted descriptors live: one DatumProto file per image, or .npz shards.

  per_image: `<output_dir>/<image_id><suffix>`, a DatumProto of a float32 [D]
    (DELF's `.delg_global` layout), each written atomically (datum_io).
  shards: `<output_dir>/descriptors-00000.npz`, ... each holding `ids`
    (unicode [N]) and `descriptors` (float32 [N, D]) and written atomically
    (file_utils.atomic_open: temporary file + os.replace) once full;
    `manifest.json` lists the shards, their sizes and D. A folder of shards
    is the set of its complete shard files, so a shard written just before a
    crash is found even if the manifest was not yet updated.

Temporary files are hidden `.<name>.<pid>.<8 hex>.tmp` files in the output
folder (file_utils.TEMP_NAME_PATTERN); `remove_stale_temp_files` deletes those
of dead processes. `read_descriptors` reads either form back as (ids, matrix).
"""

import glob
import json
import os
import re
import zipfile
from collections.abc import Sequence

import numpy as np

from dolg_tf.io import datum_io
from dolg_tf.utils import files as file_utils

DEFAULT_SUFFIX = ".dolg_global"
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "descriptors-"
SHARD_PATTERN = re.compile(r"^descriptors-(\d{5,})\.npz$")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_temp_files(output_dir: str) -> list[str]:
  """Removes temporary files of killed writers (their pid is gone); returns them."""
  removed = []
  for entry in os.scandir(output_dir):
    match = file_utils.TEMP_NAME_PATTERN.match(entry.name)
    if match and entry.is_file() and not _pid_alive(int(match.group("pid"))):
      try:
        os.unlink(entry.path)
        removed.append(entry.path)
      except FileNotFoundError:
        pass
  return removed


class PerImageWriter:
  """Writes `<output_dir>/<id><suffix>` DatumProto files."""

  def __init__(self, output_dir: str, suffix: str):
    self.output_dir = output_dir
    self.suffix = suffix

  def existing_ids(self) -> set[str]:
    """Ids that already have a descriptor file."""
    n = len(self.suffix)
    return {
      e.name[:-n]
      for e in os.scandir(self.output_dir)
      if e.name.endswith(self.suffix) and not e.name.startswith(".")
    }

  def write(self, image_id: str, descriptor: np.ndarray) -> list[str]:
    """Writes one file; returns the ids written."""
    datum_io.write_to_file(
      os.path.join(self.output_dir, image_id + self.suffix), np.asarray(descriptor, np.float32)
    )
    return [image_id]

  def flush(self) -> list[str]:
    """Nothing is buffered: returns no ids."""
    return []


def _shard_files(output_dir: str) -> list[str]:
  names = [n for n in os.listdir(output_dir) if SHARD_PATTERN.match(n)]
  return [os.path.join(output_dir, n) for n in sorted(names)]


def _npz_array_shape(archive: zipfile.ZipFile, name: str) -> tuple[int, ...]:
  """Shape of `name` in an open .npz archive, from its .npy header only."""
  with archive.open(name + ".npy") as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, _ = np.lib.format.read_array_header_1_0(f)
    else:
      shape, _, _ = np.lib.format.read_array_header_2_0(f)
  return tuple(shape)


def _read_shard(path: str, ids_only: bool = False):
  """(ids, descriptors or None, descriptors shape) of one shard file."""
  try:
    with np.load(path, allow_pickle=False) as data:
      ids = [str(s) for s in data["ids"]]
      if ids_only:
        descriptors = None
        with zipfile.ZipFile(path) as archive:
          shape = _npz_array_shape(archive, "descriptors")
      else:
        descriptors = np.asarray(data["descriptors"], dtype=np.float32)
        shape = descriptors.shape
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    raise OSError(f"{path}: not a descriptor shard ({e})") from e
  if len(shape) != 2 or shape[0] != len(ids):
    raise OSError(f"{path}: {len(ids)} ids but descriptors of shape {tuple(shape)}")
  return ids, descriptors, shape


class ShardWriter:
  """Buffers descriptors and writes `descriptors-NNNNN.npz` shards atomically."""

  def __init__(self, output_dir: str, shard_size: int = 100_000):
    if shard_size < 1:
      raise ValueError(f"shard_size must be positive, got {shard_size}")
    self.output_dir = output_dir
    self.shard_size = shard_size
    self._ids, self._rows = [], []
    self._shards = []  # (file name, count)
    self._known = set()
    self.dim = None
    for path in _shard_files(output_dir):
      ids, _, shape = _read_shard(path, ids_only=True)
      if self.dim is not None and shape[1] != self.dim:
        raise OSError(f"{path}: {shape[1]}-D descriptors, other shards have {self.dim}")
      self.dim = int(shape[1])
      self._shards.append((os.path.basename(path), len(ids)))
      self._known.update(ids)
    match = SHARD_PATTERN.match(self._shards[-1][0]) if self._shards else None
    self._next_index = int(match.group(1)) + 1 if match else 0

  def existing_ids(self) -> set[str]:
    """Ids in the complete shards of the folder (and those written since)."""
    return set(self._known)

  def write(self, image_id: str, descriptor: np.ndarray) -> list[str]:
    """Buffers one descriptor; returns the ids written if a shard was completed."""
    descriptor = np.asarray(descriptor, np.float32).ravel()
    if self.dim is None:
      self.dim = descriptor.shape[0]
    elif descriptor.shape[0] != self.dim:
      raise ValueError(f"{image_id}: {descriptor.shape[0]}-D descriptor, shards hold {self.dim}-D")
    self._ids.append(image_id)
    self._rows.append(descriptor)
    if len(self._ids) >= self.shard_size:
      return self.flush()
    return []

  def flush(self) -> list[str]:
    """Writes the buffered descriptors as one shard (if any) and the manifest."""
    if not self._ids:
      return []
    ids, rows = self._ids, self._rows
    self._ids, self._rows = [], []
    name = f"{SHARD_PREFIX}{self._next_index:05d}.npz"
    path = os.path.join(self.output_dir, name)
    with file_utils.atomic_open(path, "wb") as f:
      np.savez(f, ids=np.array(ids, dtype=str), descriptors=np.stack(rows).astype(np.float32))
    self._next_index += 1
    self._shards.append((name, len(ids)))
    self._known.update(ids)
    self._write_manifest()
    return ids

  def _write_manifest(self) -> None:
    manifest = {
      "format": "dolg_tf descriptor shards v1",
      "dim": self.dim,
      "num_descriptors": sum(c for _, c in self._shards),
      "shards": [{"file": name, "count": count} for name, count in self._shards],
    }
    file_utils.atomic_write_text(
      os.path.join(self.output_dir, MANIFEST_FILE), json.dumps(manifest, indent=1) + "\n"
    )


# ----------------------------------------------------------------------------- reading


def _select(all_ids: list[str], matrix: np.ndarray, ids: Sequence[str] | None, source: str):
  if ids is None:
    return all_ids, matrix
  position = {image_id: i for i, image_id in enumerate(all_ids)}
  missing = [i for i in ids if i not in position]
  if missing:
    raise KeyError(f"{source}: {len(missing)} id(s) not found, e.g. {missing[:5]}")
  rows = np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))
  return list(ids), matrix[rows]


def _read_shards(paths: list[str], ids, source: str):
  # Sizes first (headers only), so the matrix is allocated once: no
  # concatenation copy of a multi-GB collection.
  all_ids, counts, dim = [], [], None
  for path in paths:
    shard_ids, _, shape = _read_shard(path, ids_only=True)
    if dim is not None and shape[1] != dim:
      raise ValueError(f"{path}: {shape[1]}-D descriptors, earlier shards have {dim}")
    dim = int(shape[1])
    all_ids.extend(shard_ids)
    counts.append(len(shard_ids))
  matrix = np.empty([len(all_ids), dim or 0], np.float32)
  row = 0
  for path, count in zip(paths, counts):
    with np.load(path, allow_pickle=False) as data:
      matrix[row : row + count] = data["descriptors"]
    row += count
  return _select(all_ids, matrix, ids, source)


def _read_per_image(paths: list[str], ids, suffix: str, source: str):
  def file_id(path):
    name = os.path.basename(path)
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else os.path.splitext(name)[0]

  by_id = {file_id(p): p for p in paths}
  wanted = sorted(by_id) if ids is None else list(ids)
  missing = [i for i in wanted if i not in by_id]
  if missing:
    raise KeyError(f"{source}: {len(missing)} id(s) not found, e.g. {missing[:5]}")
  matrix = None
  for row, image_id in enumerate(wanted):
    descriptor = datum_io.read_from_file(by_id[image_id]).astype(np.float32).ravel()
    if matrix is None:
      matrix = np.empty([len(wanted), descriptor.shape[0]], np.float32)
    elif descriptor.shape[0] != matrix.shape[1]:
      raise ValueError(
        f"{by_id[image_id]}: {descriptor.shape[0]}-D descriptor, others are {matrix.shape[1]}-D"
      )
    matrix[row] = descriptor
  return wanted, matrix if matrix is not None else np.zeros([0, 0], np.float32)


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
    KeyError: some requested ids are absent.
    ValueError / IOError: inconsistent or corrupt files (named).
  """
  if os.path.isdir(source):
    shards = _shard_files(source)
    if shards:
      return _read_shards(shards, ids, source)
    paths = sorted(
      e.path
      for e in os.scandir(source)
      if e.name.endswith(suffix) and not e.name.startswith(".") and e.is_file()
    )
    return _read_per_image(paths, ids, suffix, source)
  paths = sorted(p for p in glob.glob(source) if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f"{source}: no descriptor files found")
  if all(p.endswith(".npz") for p in paths):
    return _read_shards(paths, ids, source)
  return _read_per_image(paths, ids, suffix, source)
