"""Revisited Oxford / Paris ground truth (Radenovic et al., CVPR 2018).

The ground truth is published in two forms, both read by `load_ground_truth`:

* Python pickle, `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl`: a dict with
  `imlist` (database image names), `qimlist` (query image names) and `gnd`,
  one dict per query with `bbx` (query box [x1, y1, x2, y2]) and the index
  lists `easy`, `hard`, `junk`, all indices 0-based into `imlist`.

* MATLAB, `gnd_roxford5k.mat` / `gnd_rparis6k.mat` (read with
  `scipy.io.loadmat`): variables `imlist` and `qimlist` (cell arrays of
  strings) and `gnd`, a 1 x num_queries struct array with fields `easy`,
  `hard`, `junk` and `bbx`.

Conversion of the .mat form (facts from the revisitop code: its Python
`gnd_mat2py` subtracts 1 from the index fields and keeps `bbx` as is, and its
MATLAB `crop_qim` adds 1 to `bbx` because "gnd bbx is zero-based"):
  * `easy`, `hard`, `junk` are 1-based MATLAB indices: 1 is subtracted so the
    result is 0-based like the pickle. A value below 1 is rejected.
  * `bbx` is already in 0-based pixel coordinates in both files and is copied
    unchanged (as float64).
  * Cell-array names are flattened to Python strings.

Both forms give the same `RevisitedGroundTruth`. Neither runs code from the
file: pickles are read with `untrusted.load_pickle`, which accepts only
containers, strings, numbers and numpy arrays and refuses any other global the
pickle names (one line naming the file and the global), and `loadmat` reads
data only. The structure is then checked: a missing key, a wrong type or an
index outside `imlist` is a ValueError naming the file and the field.
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dolg_tf.utils import untrusted

PROTOCOLS = ("easy", "medium", "hard")
_INDEX_FIELDS = ("easy", "hard", "junk")


@dataclasses.dataclass(frozen=True)
class RevisitedGroundTruth:
  """Ground truth of one revisited dataset, with 0-based indices.

  Attributes:
    dataset: dataset name taken from the file name (`gnd_roxford5k.pkl` ->
      'roxford5k').
    imlist: database image names (no extension), length num_db.
    qimlist: query image names, length num_queries.
    gnd: one dict per query with 'easy', 'hard', 'junk' (int64 arrays of
      0-based indices into `imlist`) and 'bbx' (float64 [4] array
      [x1, y1, x2, y2] in 0-based pixels, or None when the file has none).
  """

  dataset: str
  imlist: tuple[str, ...]
  qimlist: tuple[str, ...]
  gnd: tuple[dict[str, Any], ...]

  @property
  def num_db(self) -> int:
    return len(self.imlist)

  @property
  def num_queries(self) -> int:
    return len(self.qimlist)


def _dataset_name(path: str) -> str:
  stem = os.path.splitext(os.path.basename(path))[0]
  return stem[len("gnd_") :] if stem.startswith("gnd_") else stem


def _index_array(value: Any, path: str, query: int, field: str, one_based: bool) -> np.ndarray:
  """Converts one index list to a 0-based int64 vector."""
  try:
    arr = np.asarray(value if value is not None else [], dtype=np.float64).ravel()
  except (TypeError, ValueError, RecursionError) as e:
    raise ValueError(f"{path}: gnd[{query}]['{field}'] is not a list of indices ({e})") from e
  if arr.size and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
    raise ValueError(f"{path}: gnd[{query}]['{field}'] holds non-integer indices")
  out = arr.astype(np.int64)
  if one_based:
    if out.size and out.min() < 1:
      raise ValueError(f"{path}: gnd[{query}].{field} has an index below 1 (MATLAB is 1-based)")
    out = out - 1
  return out


def _bbx_array(value: Any, path: str, query: int) -> np.ndarray | None:
  if value is None:
    return None
  try:
    arr = np.asarray(value, dtype=np.float64).ravel()
  except (TypeError, ValueError, RecursionError) as e:
    raise ValueError(f"{path}: gnd[{query}]['bbx'] is not 4 numbers ({e})") from e
  if arr.size == 0:
    return None
  if arr.size != 4:
    raise ValueError(f"{path}: gnd[{query}] bbx has {arr.size} values, expected 4")
  return arr


def _validate(gt: RevisitedGroundTruth, path: str) -> RevisitedGroundTruth:
  if len(gt.gnd) != len(gt.qimlist):
    raise ValueError(
      f"{path}: gnd has {len(gt.gnd)} entries but qimlist has {len(gt.qimlist)} queries"
    )
  for i, q in enumerate(gt.gnd):
    for field in _INDEX_FIELDS:
      idx = q[field]
      if idx.size and (idx.min() < 0 or idx.max() >= gt.num_db):
        raise ValueError(
          f"{path}: gnd[{i}]['{field}'] has an index outside [0, {gt.num_db}) of imlist"
        )
  return gt


def _read_pkl(path: str) -> RevisitedGroundTruth:
  try:
    with open(path, "rb") as f:
      try:
        cfg = untrusted.load_pickle(f)
      except UnicodeDecodeError:  # Python 2 str objects (numpy arrays pickled by Python 2)
        f.seek(0)
        cfg = untrusted.load_pickle(f, encoding="latin1")
  except untrusted.RefusedPickleError as e:
    raise ValueError(f"{path}: {e}") from None
  except OSError as e:
    raise OSError(f"{path}: cannot read ({e.strerror or e})") from e
  except EOFError as e:
    raise ValueError(f"{path}: truncated or empty pickle ({e})") from e
  except Exception as e:  # unpickling text or a damaged file raises many exception types
    text = " ".join(str(e).split())[:200]
    raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {text})") from e
  if not isinstance(cfg, Mapping):
    raise ValueError(f"{path}: expected a dict with imlist, qimlist, gnd; got {type(cfg).__name__}")
  missing = [key for key in ("imlist", "qimlist", "gnd") if key not in cfg]
  if missing:
    raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
  for key in ("imlist", "qimlist", "gnd"):
    if isinstance(cfg[key], (str, bytes)) or not isinstance(cfg[key], (Sequence, np.ndarray)):
      raise ValueError(f"{path}: '{key}' is a {type(cfg[key]).__name__}, expected a list")
  gnd = []
  for i, q in enumerate(cfg["gnd"]):
    if not isinstance(q, Mapping):
      raise ValueError(f"{path}: gnd[{i}] is a {type(q).__name__}, expected a dict")
    absent = [field for field in _INDEX_FIELDS if field not in q]
    if absent:
      raise ValueError(f"{path}: gnd[{i}] lacks field(s) {', '.join(absent)}")
    entry = {
      field: _index_array(q[field], path, i, field, one_based=False) for field in _INDEX_FIELDS
    }
    entry["bbx"] = _bbx_array(q.get("bbx"), path, i)
    gnd.append(entry)
  gt = RevisitedGroundTruth(
    dataset=_dataset_name(path),
    imlist=_pkl_names(cfg["imlist"], path, "imlist"),
    qimlist=_pkl_names(cfg["qimlist"], path, "qimlist"),
    gnd=tuple(gnd),
  )
  return _validate(gt, path)


def _pkl_names(values: Any, path: str, key: str) -> tuple[str, ...]:
  """Image names of a pickle: str (or UTF-8 bytes), never the repr of another object."""
  names = []
  for i, value in enumerate(values):
    if isinstance(value, bytes):
      try:
        value = value.decode("utf-8")
      except UnicodeDecodeError:
        raise ValueError(f"{path}: {key}[{i}] is not UTF-8 text") from None
    if not isinstance(value, str):
      raise ValueError(f"{path}: {key}[{i}] is a {type(value).__name__}, expected a string")
    names.append(str(value))
  return tuple(names)


def _mat_strings(cell: Any) -> tuple[str, ...]:
  """Flattens a loadmat cell array of strings to a tuple of str."""
  names = []
  for item in np.asarray(cell, dtype=object).ravel():
    if isinstance(item, str):
      names.append(item)
    else:
      names.append("".join(str(s) for s in np.asarray(item).ravel()))
  return tuple(names)


def _read_mat(path: str) -> RevisitedGroundTruth:
  # scipy is imported for .mat files only (keeps .pkl reading light).
  from scipy import io as scipy_io  # pylint: disable=g-import-not-at-top

  try:
    mat = scipy_io.loadmat(path)
  except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files.
    raise ValueError(f"{path}: MATLAB v7.3 files are not supported, save with -v7") from e
  except Exception as e:  # scipy raises many exception types for text or truncated files
    text = " ".join(str(e).split())[:200] or type(e).__name__
    raise ValueError(f"{path}: truncated or not a readable .mat file ({text})") from e
  missing = [key for key in ("imlist", "qimlist", "gnd") if key not in mat]
  if missing:
    raise ValueError(f"{path}: missing variable(s) {', '.join(missing)}")
  gnd_struct = np.asarray(mat["gnd"]).ravel()
  names = gnd_struct.dtype.names or ()
  absent = [field for field in _INDEX_FIELDS if field not in names]
  if absent:
    raise ValueError(f"{path}: gnd struct lacks field(s) {', '.join(absent)}")
  gnd = []
  for i, q in enumerate(gnd_struct):
    entry = {
      field: _index_array(q[field], path, i, field, one_based=True) for field in _INDEX_FIELDS
    }
    entry["bbx"] = _bbx_array(q["bbx"], path, i) if "bbx" in names else None
    gnd.append(entry)
  gt = RevisitedGroundTruth(
    dataset=_dataset_name(path),
    imlist=_mat_strings(mat["imlist"]),
    qimlist=_mat_strings(mat["qimlist"]),
    gnd=tuple(gnd),
  )
  return _validate(gt, path)


def load_ground_truth(path: str) -> RevisitedGroundTruth:
  """Reads `gnd_<dataset>.pkl` or `gnd_<dataset>.mat`.

  Args:
    path: file path; the format is chosen by the extension (.pkl / .pickle or
      .mat).

  Returns:
    A `RevisitedGroundTruth` with 0-based indices.

  Raises:
    IOError: the file does not exist.
    ValueError: unknown extension or a malformed file (message names it).
  """
  if not os.path.isfile(path):
    raise OSError(f"{path}: ground-truth file not found")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pkl", ".pickle"):
    return _read_pkl(path)
  if ext == ".mat":
    return _read_mat(path)
  raise ValueError(f"{path}: unknown ground-truth format '{ext}', expected .pkl or .mat")


def protocol_ground_truth(
  gnd: RevisitedGroundTruth | Sequence[Mapping[str, Any]], protocol: str
) -> list[dict[str, np.ndarray]]:
  """Per-query positives ('ok') and ignored images ('junk') for one protocol.

  Easy:   ok = easy,        junk = junk + hard.
  Medium: ok = easy + hard, junk = junk.
  Hard:   ok = hard,        junk = junk + easy.

  Args:
    gnd: a `RevisitedGroundTruth` or its `gnd` list (dicts with easy, hard,
      junk).
    protocol: 'easy', 'medium' or 'hard' (case-insensitive).

  Returns:
    One dict per query with int64 arrays 'ok' and 'junk'.

  Raises:
    ValueError: unknown protocol.
  """
  queries = gnd.gnd if isinstance(gnd, RevisitedGroundTruth) else gnd
  protocol = protocol.lower()
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got '{protocol}'")

  def arr(q, field):
    return np.asarray(q.get(field, ()), dtype=np.int64).ravel()

  out = []
  for q in queries:
    easy, hard, junk = arr(q, "easy"), arr(q, "hard"), arr(q, "junk")
    if protocol == "easy":
      ok, ignore = easy, np.concatenate([junk, hard])
    elif protocol == "medium":
      ok, ignore = np.concatenate([easy, hard]), junk
    else:
      ok, ignore = hard, np.concatenate([junk, easy])
    out.append({"ok": ok, "junk": ignore})
  return out
