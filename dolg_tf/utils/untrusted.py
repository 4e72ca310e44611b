"""Reading files the project did not write: pickles, text lists, paths under a folder.

Every such file is data, never code:

* `load_pickle` unpickles with a restricted `pickle.Unpickler`: plain
  containers, strings and numbers, plus the few numpy callables that rebuild
  arrays, dtypes and numpy scalars. Any other global the pickle names
  (`os.system`, `builtins.eval`, a class of some module, ...) is refused
  before it is looked up, so nothing in the file runs (RefusedPickleError).
* `decode_text` / `utf8_lines` decode UTF-8 (a leading byte-order mark is
  dropped) and name the file, line and byte offset of an undecodable byte.
* `is_inside` says whether a path stays inside a folder lexically (after
  `os.path.normpath`, without resolving symbolic links).

This module imports only the standard library and numpy.
"""

import codecs
import csv
import os
import pickle
from collections.abc import Iterable, Iterator
from typing import IO, Any

import numpy as np

ACCEPTED = "only dicts, lists, strings, numbers and numpy arrays are accepted"


class RefusedPickleError(pickle.UnpicklingError):
  """A pickle names a global outside the allowed numpy reconstruction helpers.

  Attributes:
    name: the refused global, `module.name`.
  """

  def __init__(self, name: str):
    super().__init__(f"refused to load: the pickle asks for {name} ({ACCEPTED})")
    self.name = name


def _latin1_encode(text: str, encoding: str = "latin1", *args: Any) -> bytes:
  """`_codecs.encode` as protocol-2 pickles of bytes use it, for latin-1 only."""
  if codecs.lookup(encoding).name != "iso8859-1" or args:
    raise RefusedPickleError(f"_codecs.encode with encoding {encoding!r}")
  if not isinstance(text, str):
    raise pickle.UnpicklingError(f"_codecs.encode of a {type(text).__name__}")
  return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
  """`bytes()` as protocol 0-2 pickles of b"" use it; never `bytes(n)` (n zero bytes)."""
  if args:
    raise RefusedPickleError("bytes with arguments")
  return b""


class _NdarrayName:
  """What `numpy.ndarray` means in an array pickle: the type `_reconstruct` is given.

  numpy never calls the type itself; calling it (`ndarray(shape)`) would
  allocate whatever shape the file asks for, so that is refused.
  """

  def __new__(cls, *args: Any, **kwargs: Any):
    raise RefusedPickleError("numpy.ndarray called directly")


def _numpy_globals() -> dict[tuple[str, str], Any]:
  """The numpy callables array pickles name, under their numpy 1 and numpy 2 module names.

  They are taken from what the installed numpy's own reductions return, so
  no private module is imported by name. Those that would allocate what the
  pickle asks for before its data is read are wrapped to refuse sizes that
  numpy itself never writes.
  """
  reconstruct = np.zeros(0).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
  scalar = np.float64(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
  frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy(._)core.numeric._frombuffer

  def empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') + __setstate__ with its data.
    if subtype is not _NdarrayName or int(np.prod(shape, dtype=np.float64)) > 1:
      raise RefusedPickleError(f"an array of shape {shape!r} before its data")
    return reconstruct(np.ndarray, shape, dtype)

  def numpy_scalar(dtype: Any, *args: Any) -> Any:
    # The data of a numpy scalar is its itemsize bytes (latin-1 text for Python 2 pickles).
    if not isinstance(dtype, np.dtype) or (
      not dtype.hasobject and (len(args) != 1 or len(args[0]) != dtype.itemsize)
    ):
      raise RefusedPickleError("a numpy scalar whose data does not match its dtype")
    return scalar(dtype, *args)

  table = {
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
  }
  for core in ("numpy.core", "numpy._core"):
    table[(f"{core}.multiarray", "_reconstruct")] = empty_array
    table[(f"{core}.multiarray", "scalar")] = numpy_scalar
    table[(f"{core}.numeric", "_frombuffer")] = frombuffer
  return table


_ALLOWED = _numpy_globals()


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler that resolves only the globals of `_ALLOWED`."""

  def find_class(self, module: str, name: str) -> Any:
    found = _ALLOWED.get((module, name))
    if found is None:
      raise RefusedPickleError(f"{module}.{name}")
    return found


def load_pickle(f: IO[bytes], encoding: str = "ASCII") -> Any:
  """Unpickles one object from a binary file, refusing every global but numpy's array helpers.

  Args:
    f: a binary file object.
    encoding: how Python 2 `str` objects are decoded (pickle's `encoding`;
      "latin1" for numpy arrays pickled by Python 2).

  Returns:
    The object: dicts, lists, tuples, strings, bytes, numbers, None, numpy
    arrays, dtypes and scalars.

  Raises:
    RefusedPickleError: the pickle names another global (nothing is run).
    Other exceptions of pickle / numpy on a damaged file.
  """
  return RestrictedUnpickler(f, encoding=encoding).load()


def _decode_error(path: str, error: UnicodeDecodeError, offset: int, line: int) -> ValueError:
  # error.object is what was decoded: without a leading BOM for utf-8-sig.
  chunk = error.object
  return ValueError(
    f"{path}: not UTF-8 text: byte {chunk[error.start : error.start + 1]!r} at offset "
    f"{offset + error.start} (line {line}); save the file as UTF-8"
  )


def decode_text(data: bytes, path: str) -> str:
  """UTF-8 text of a whole file, without a leading byte-order mark.

  Raises:
    ValueError: one line naming `path`, the byte offset and the line of the
      first byte that is not UTF-8.
  """
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    skipped = len(data) - len(e.object)  # a leading BOM
    line = e.object.count(b"\n", 0, e.start) + 1
    raise _decode_error(path, e, skipped, line) from None


def utf8_lines(f: Iterable[bytes], path: str) -> Iterator[str]:
  """The lines of a binary file as text, streamed (endings kept, a leading BOM dropped).

  Raises:
    ValueError: as decode_text, with the line number and file offset.
  """
  offset = 0
  for number, raw in enumerate(f, 1):
    try:
      text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as e:
      raise _decode_error(path, e, offset + len(raw) - len(e.object), number) from None
    offset += len(raw)
    yield text


def is_inside(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or below it, lexically (`..` resolved, symlinks not followed).

  Relative paths are taken relative to the current directory.
  """
  folder = os.path.abspath(folder)
  path = os.path.abspath(path)
  return os.path.commonpath([folder, path]) == folder


def csv_rows(reader: Iterable[Any], path: str) -> Iterator[Any]:
  """The rows of a csv reader; a malformed row (e.g. a field over csv's size limit) names the file.

  Raises:
    ValueError: `<path>:<line>: malformed CSV (<reason>)`.
  """
  rows = iter(reader)
  while True:
    try:
      row = next(rows)
    except StopIteration:
      return
    except csv.Error as e:
      line = getattr(reader, "line_num", -1) + 1  # the line being read when it failed
      raise ValueError(f"{path}:{line}: malformed CSV ({e})") from None
    yield row
