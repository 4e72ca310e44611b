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
folder (file_utils.TEMP_NAME_PATTERN); `file_utils.remove_stale_temp_files` deletes those
of dead processes, `file_utils.remove_own_temp_files` this process's after a stopped run.

The output folder: `prepare_output_dir` creates it and proves it writable,
`OutputLock` (fcntl.flock on `.dolg_extract.lock`) keeps a second extraction
out, `OutputError` is a one-line error about the folder, and `folder_errno`
tells a folder-wide write error (disk full, read-only, permission denied)
from a failure of one image. `read_descriptors` reads either form back as
(ids, matrix), refusing (ValueError naming the file) any descriptor that
cannot be ranked: `descriptor_problem`.

Resuming: a per-image file counts as done only if it parses and its
descriptor is usable (`datum_file_problem`; any other is logged and written
again); a shard that does not read back is renamed `<name>.corrupt` and its
images are extracted again.
"""

import errno
import glob
import json
import math
import os
import re
import zipfile
from collections.abc import Sequence

import numpy as np
from absl import logging

from dolg_tf.io import datum_io
from dolg_tf.utils import dir_lock
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


def _row_problem(row: np.ndarray) -> str:
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


def _bad_rows(matrix: np.ndarray) -> np.ndarray:
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
  return _row_problem(values)


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


# ----------------------------------------------------------------------------- output folder

LOCK_FILE = ".dolg_extract.lock"

# Write errors about the whole output folder, not one image: no later write can
# succeed, so a batch job stops instead of recording every image as a failure.
FOLDER_ERRNOS = {
  errno.ENOSPC: "disk full",
  errno.EDQUOT: "disk quota exceeded",
  errno.EROFS: "read-only file system",
  errno.EACCES: "permission denied",
  errno.EPERM: "permission denied",
}


class OutputError(OSError):
  """The output folder cannot be used: not a folder, not writable, full or in use.

  The message is one line naming the folder or file.
  """


def folder_errno(error: BaseException | None) -> int | None:
  """The FOLDER_ERRNOS errno of `error` or of an error it was raised from, else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in FOLDER_ERRNOS:
      return error.errno
    error = error.__cause__ or error.__context__
  return None


def os_error_text(error: BaseException) -> str:
  """The OS's words for `error` (its strerror or that of its cause), else its message."""
  seen, current = set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    if isinstance(current, OSError) and current.strerror:
      return current.strerror
    current = current.__cause__ or current.__context__
  return " ".join(str(error).split())


def prepare_output_dir(output_dir: str) -> bool:
  """Creates `output_dir` if needed and checks that files can be created in it.

  A real probe (a hidden temporary file, created and removed), not
  `os.access`, so read-only mounts, ACLs and root are all judged right.

  Returns:
    Whether the folder was created.

  Raises:
    OutputError: naming the folder, if it is a file, cannot be created or is
      not writable.
  """
  if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
    raise OutputError(f"{output_dir}: output folder is a file, not a folder")
  created = False
  if not os.path.isdir(output_dir):
    try:
      os.makedirs(output_dir)
      created = True
    except FileExistsError:
      pass  # Made meanwhile by someone else; the probe below decides.
    except OSError as e:
      raise OutputError(
        f"{output_dir}: cannot create the output folder ({os_error_text(e)})"
      ) from e
  probe = file_utils.temp_path(os.path.join(output_dir, "write-test"))
  try:
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)
  except OSError as e:
    raise OutputError(f"{output_dir}: output folder is not writable ({os_error_text(e)})") from e
  return created


class OutputLock:
  """One extraction at a time per output folder: an exclusive `fcntl.flock`.

  The lock is taken on `<output_dir>/.dolg_extract.lock`, which holds the
  holder's "pid <pid> on <host>". The OS drops a flock when its process ends,
  however it ends, so a killed run never leaves a stale lock; the file is
  removed on release (a file left by a killed run is harmless: only the flock
  counts). Two opens of the file, even in one process, exclude each other.

    with descriptor_store.OutputLock("out/"):
      ...
  """

  def __init__(self, output_dir: str):
    self.output_dir = output_dir
    self.path = os.path.join(output_dir, LOCK_FILE)
    self._lock = dir_lock.DirLock(self.path)

  @property
  def held(self) -> bool:
    return self._lock.held

  def acquire(self) -> "OutputLock":
    """Takes the lock without waiting (dolg_tf.utils.dir_lock).

    Raises:
      OutputError: naming the folder and the pid and host of the holder, if
        another extraction holds it; naming the lock file if it cannot be
        created or locked.
    """
    try:
      self._lock.acquire()
    except dir_lock.LockBusyError as e:
      raise OutputError(
        f"{self.output_dir}: output folder in use by another extraction ({e.holder}); "
        "wait for it to finish or use another output folder"
      ) from None
    except dir_lock.LockFileError as e:
      raise OutputError(f"{self.path}: cannot {e.action} ({os_error_text(e)})") from e
    return self

  def release(self) -> None:
    """Removes the lock file and drops the lock (no-op if not held)."""
    self._lock.release()

  def __enter__(self) -> "OutputLock":
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


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
    for path in _shard_files(output_dir):
      try:
        ids, _, shape = _read_shard(path, ids_only=True)
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


# ----------------------------------------------------------------------------- reading

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
  bad = _bad_rows(block)
  if bad.size:
    raise ValueError(
      f"{path}: {_row_problem(block[bad[0]])} for image {block_ids[bad[0]]} "
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
    shard_ids, _, shape = _read_shard(path, ids_only=True)
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
  problem = descriptor_problem(descriptor)
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
    shards = _shard_files(source)
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
