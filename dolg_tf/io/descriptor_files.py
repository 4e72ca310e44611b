"""The descriptor files extraction writes: one DatumProto per image, or .npz shards.

  per_image: `<output_dir>/<image_id><suffix>`, a DatumProto of a float32 [D]
    (DELF's `.delg_global` layout), each written atomically (datum_io).
  shards: `<output_dir>/descriptors-00000.npz`, ... each holding `ids`
    (unicode [N]) and `descriptors` (float32 [N, D]) and written atomically
    (file_utils.atomic_open: temporary file + os.replace) once full;
    `manifest.json` lists the shards, their sizes and D. A folder of shards
    is the set of its complete shard files, so a shard written just before a
    crash is found even if the manifest was not yet updated.

Temporary files are hidden `.<name>.<pid>.<8 hex>.tmp` files in the output
folder (file_utils.TEMP_NAME_PATTERN); `file_utils.remove_stale_temp_files` deletes those
of dead processes, `file_utils.remove_own_temp_files` this process's after a stopped run.

Validity: `descriptor_problem` names why a descriptor cannot be ranked
(retrieval refuses such a file: descriptor_reading.py). Resuming: a per-image
file counts as done only if it parses and its descriptor is usable
(`datum_file_problem`; any other is logged and written again); a shard that
does not read back is renamed `<name>.corrupt` and its images are extracted
again. The output folder's lock and errors are extraction's
(extraction/output_folder.py).
"""

import json
import math
import os
import re
import zipfile

import numpy as np
from absl import logging

from dolg_tf.io import datum_io
from dolg_tf.utils import files as file_utils

DEFAULT_SUFFIX = ".dolg_global"
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "descriptors-"
SHARD_PATTERN = re.compile(r"^descriptors-(\d{5,})\.npz$")
# A shard that does not read back on resume is renamed `<name><CORRUPT_SUFFIX>`
# (no longer a shard) and its images are extracted again.
CORRUPT_SUFFIX = ".corrupt"
# The smallest L2 norm a descriptor may have: retrieval L2-normalises in float32
# with this floor (utils.arrays.l2_normalize), so a smaller one does not become
# a unit vector, and a zero one would rank by position, not by content.
MIN_DESCRIPTOR_NORM = 1e-12
# Rows checked at a time (bounds the temporaries of the check on a large shard).
_CHECK_ROWS = 8192


# ----------------------------------------------------------------------------- validity


def row_problem(row: np.ndarray) -> str:
  """What is wrong with a float32 [D] descriptor known to be unusable (see descriptor_problem)."""
  bad = int(np.count_nonzero(~np.isfinite(row)))
  if bad:
    return f"non-finite descriptor ({bad} of {row.size} values are NaN or inf)"
  if not row.any():
    return f"all-zero descriptor ({row.size} values)"
  with np.errstate(over="ignore"):
    norm = float(np.linalg.norm(row))
  if not np.isfinite(norm):
    largest = float(np.max(np.abs(row)))
    return f"descriptor whose L2 norm overflows float32 (largest |value| {largest:.3g})"
  return (
    f"descriptor whose L2 norm {norm:.3g} is under {MIN_DESCRIPTOR_NORM:g} (normalises to zero)"
  )


def bad_rows(matrix: np.ndarray) -> np.ndarray:
  """Indices of the rows of float32 [N, D] that retrieval cannot rank (see descriptor_problem)."""
  bad = []
  for start in range(0, len(matrix), _CHECK_ROWS):
    block = matrix[start : start + _CHECK_ROWS]
    with np.errstate(over="ignore", invalid="ignore"):
      norms = np.linalg.norm(block, axis=1)
    ok = np.isfinite(norms) & (norms >= MIN_DESCRIPTOR_NORM)  # NaN / inf rows: non-finite norm
    bad.append(np.flatnonzero(~ok) + start)
  return np.concatenate(bad) if bad else np.zeros([0], np.int64)


def descriptor_problem(descriptor) -> str | None:
  """Why `descriptor` cannot be ranked, or None if it can.

  A global descriptor must be a 1-D [D] vector (D > 0) of finite numbers
  whose float32 L2 norm is finite and at least MIN_DESCRIPTOR_NORM: an
  all-zero vector (a degenerate export), NaN / inf values, or values so large
  (e.g. 1e30) that the norm overflows float32 would all rank as noise.

  Returns:
    One phrase ('all-zero descriptor (16 values)', ...), or None.
  """
  values = np.asarray(descriptor)
  if values.ndim != 1:
    return f"{values.ndim}-D descriptor of shape {list(values.shape)}, not a [D] vector"
  if values.size == 0:
    return "empty descriptor (0 values)"
  if values.dtype.kind not in "fiu":
    return f"descriptor of dtype {values.dtype}, not numbers"
  if values.dtype != np.float32:
    with np.errstate(over="ignore", invalid="ignore"):
      values = values.astype(np.float32)  # float64 beyond float32 becomes inf
  # Summed in float32, as retrieval normalises: NaN, inf or an overflow give a non-finite sum.
  with np.errstate(over="ignore", invalid="ignore"):  # numpy 2 warns on a dot overflow.
    squared = float(np.dot(values, values))
  if math.isfinite(squared) and squared >= MIN_DESCRIPTOR_NORM**2:
    return None
  return row_problem(values)


def datum_file_problem(path: str) -> str | None:
  """Why the DatumProto descriptor file `path` is not a usable output, or None.

  Reads and parses the file (a few KB): empty, truncated or garbage files and
  unusable descriptors (`descriptor_problem`) are named.
  """
  try:
    data = file_utils.read_bytes(path)
  except OSError as e:
    return f"unreadable ({os_error_text(e)})"
  if not data:
    return "empty file (0 bytes)"
  try:
    descriptor = datum_io.parse_array(data)
  except ValueError as e:
    return f"corrupt DatumProto ({e})"
  return descriptor_problem(descriptor)


def check_existing(paths: dict) -> set[str]:
  """The ids of {id: path} whose DatumProto descriptor file is usable (`datum_file_problem`).

  Each other file is logged (INFO) and left for the run to write again.
  """
  ok = set()
  for image_id, path in paths.items():
    problem = datum_file_problem(path)
    if problem is None:
      ok.add(image_id)
    else:
      logging.info("%s: %s; extracting the image again", path, problem)
  return ok


def os_error_text(error: BaseException) -> str:
  """The OS's words for `error` (its strerror or that of its cause), else its message."""
  seen, current = set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    if isinstance(current, OSError) and current.strerror:
      return current.strerror
    current = current.__cause__ or current.__context__
  return " ".join(str(error).split())


class PerImageWriter:
  """Writes `<output_dir>/<id><suffix>` DatumProto files."""

  def __init__(self, output_dir: str, suffix: str):
    self.output_dir = output_dir
    self.suffix = suffix

  def existing_ids(self) -> set[str]:
    """Ids that already have a usable descriptor file (each file is parsed: check_existing)."""
    n = len(self.suffix)
    return check_existing(
      {
        e.name[:-n]: e.path
        for e in os.scandir(self.output_dir)
        if e.name.endswith(self.suffix) and not e.name.startswith(".")
      }
    )

  def write(self, image_id: str, descriptor: np.ndarray) -> list[str]:
    """Writes one file; returns the ids written."""
    datum_io.write_to_file(
      os.path.join(self.output_dir, image_id + self.suffix), np.asarray(descriptor, np.float32)
    )
    return [image_id]

  def flush(self) -> list[str]:
    """Nothing is buffered: returns no ids."""
    return []


def shard_files(output_dir: str) -> list[str]:
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


def read_shard(path: str, ids_only: bool = False):
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
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
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
    for path in shard_files(output_dir):
      try:
        ids, _, shape = read_shard(path, ids_only=True)
      except OSError as e:  # Truncated or empty (a copy, an old unsynced write): redo its images.
        aside = path + CORRUPT_SUFFIX
        logging.warning("%s; renamed to %s, its images are extracted again", e, aside)
        os.replace(path, aside)
        continue
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
