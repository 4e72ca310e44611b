"""Binarised local descriptors (DELG*): sign bits, packed storage, Hamming matching.

A float descriptor d of D components becomes the D bits `d > 0`, packed 8 per
byte with `numpy.packbits` (big-endian bit order: component 8*j is the most
significant bit of byte j; the last byte is zero-padded when D is not a
multiple of 8), i.e. a uint8 [ceil(D/8)] row.

File format. DELF's DatumProto has no byte list: unsigned integers of 8 to 32
bits are stored in its `uint32_list` (datum_io's rules). A binarised
`.delg_local` file is therefore an ordinary DelfFeatures file in which the
`descriptor` DatumProto of each feature has shape [ceil(D/8)] and a
`uint32_list` holding the packed bytes, one byte value (0..255) per uint32.
Reading such a file with feature_io gives uint32 [N, ceil(D/8)]
descriptors; `from_stored` turns them back into packed uint8. The number of
bits D is not recorded: D = 8 * ceil(D/8) is assumed by `unpack` unless given
(the padding bits are zero in both images, so they never add to a Hamming
distance).

Distances: the Hamming distance between two packed rows is the popcount of
their XOR. `hamming_distance` computes full [Na, Nb] matrices as one matrix
product of the unpacked +-1 bits; `hamming_distance_lut` with a 256-entry
popcount table (same values, less memory per pair, slower). Both are
references: matching (`match_binary`) never builds the [Na, Nb] matrix but
asks faiss (`faiss.knn_hamming`, popcount of 64-bit words, a 2-entry heap per
row) for the two nearest rows of b, about 10x faster than the matrix product
for 1000 x 1000 128-bit rows (benchmarks/delg_benchmark.py).
`match_binary_reference` is the matrix version of `match_binary`, same output.

Ties. Both matchers pick, among the rows of b at the smallest distance, the
one with the lowest index (numpy's argmin). faiss's heap keeps the two
smallest (distance, index) pairs (a later row at an equal distance never
displaces an earlier one), so the lowest-index nearest row is always among
the two returned; `match_binary` takes the smaller of the two indices when
both distances are equal, which makes the result independent of how faiss
orders equal distances. The ratio test only needs the second smallest
distance (counted with multiplicity, as np.partition), which is the second
one returned.

Threads. faiss parallelises over the rows of a with OpenMP. On a 2-core
machine two threads take 0.5 ms instead of 0.9 ms for 1000 x 1000 rows when
the cores are idle, but 3.5 ms to 0.5 s when other thread pools still spin
on them (e.g. OpenBLAS after a numpy matrix product, OpenCV's): OpenMP waits
for its slowest thread. `match_binary` therefore runs faiss on one thread by
default (`num_threads`), restoring the calling thread's previous OpenMP
setting after the call; parallelise re-ranking over images or queries instead.
"""

import numpy as np

# popcount of every byte value.
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)
_POPCOUNT = _POPCOUNT.astype(np.uint16)
# Bytes of the [block, Nb, B] XOR array built at once by hamming_distance.
_BLOCK_BYTES = 1 << 25


def binarize(descriptors: np.ndarray) -> np.ndarray:
  """Sign bits of float descriptors [N, D] (or [D]) packed into uint8 [N, ceil(D/8)]."""
  descriptors = np.asarray(descriptors)
  if descriptors.ndim not in (1, 2):
    raise ValueError(f"descriptors must be [D] or [N, D], got shape {descriptors.shape}")
  return np.packbits(descriptors > 0, axis=-1)


def unpack(packed: np.ndarray, num_bits: int | None = None) -> np.ndarray:
  """Packed rows [N, B] -> uint8 bits [N, num_bits] (default 8 * B) in {0, 1}."""
  packed = as_packed(packed)
  bits = np.unpackbits(packed, axis=-1)
  if num_bits is not None:
    if num_bits > bits.shape[-1]:
      raise ValueError(f"num_bits {num_bits} exceeds the {bits.shape[-1]} packed bits")
    bits = bits[..., :num_bits]
  return bits


def to_stored(packed: np.ndarray) -> np.ndarray:
  """Packed uint8 -> uint32 of the same values: what the DatumProto holds."""
  return as_packed(packed).astype(np.uint32)


def as_packed(values: np.ndarray) -> np.ndarray:
  """uint8 packed rows, from uint8 or stored (uint32/uint16/uint64) byte values.

  Raises:
    ValueError: float/signed input, or a value above 255 (not a packed byte).
  """
  values = np.asarray(values)
  if values.dtype == np.uint8:
    return values
  if values.dtype.kind != "u":
    raise ValueError(f"binarised descriptors must be unsigned integers, got {values.dtype}")
  if values.size and int(values.max()) > 255:
    raise ValueError(f"binarised descriptor values must be bytes (<= 255), max is {values.max()}")
  return values.astype(np.uint8)


def is_binary(descriptors: np.ndarray) -> bool:
  """True for packed (unsigned integer) descriptors, False for float ones."""
  return np.asarray(descriptors).dtype.kind == "u"


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Hamming distances int32 [Na, Nb] between packed rows a [Na, B] and b [Nb, B].

  Bits are unpacked (np.unpackbits) to +-1 and the distance is
  (8B - <a, b>) / 2, one matrix product (exact: the products are small
  integers in float32). `hamming_distance_lut` is the popcount-table version.
  """
  a, b = np.atleast_2d(as_packed(a)), np.atleast_2d(as_packed(b))
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"packed widths differ: {a.shape[1]} vs {b.shape[1]} bytes")
  if a.shape[0] == 0 or b.shape[0] == 0:
    return np.zeros([a.shape[0], b.shape[0]], dtype=np.int32)
  signs_a = np.unpackbits(a, axis=1).astype(np.float32) * 2.0 - 1.0
  signs_b = np.unpackbits(b, axis=1).astype(np.float32) * 2.0 - 1.0
  dot = signs_a @ signs_b.T
  return np.rint((signs_a.shape[1] - dot) * 0.5).astype(np.int32)


def hamming_distance_lut(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`hamming_distance` by a 256-entry popcount table of the XOR, in row blocks."""
  a, b = np.atleast_2d(as_packed(a)), np.atleast_2d(as_packed(b))
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"packed widths differ: {a.shape[1]} vs {b.shape[1]} bytes")
  out = np.zeros([a.shape[0], b.shape[0]], dtype=np.int32)
  if out.size == 0:
    return out
  block = max(1, _BLOCK_BYTES // max(1, b.shape[0] * b.shape[1]))
  for start in range(0, a.shape[0], block):
    xor = np.bitwise_xor(a[start : start + block, None, :], b[None, :, :])
    out[start : start + block] = _POPCOUNT[xor].sum(axis=-1, dtype=np.int32)
  return out


def hamming_threshold_for_l2(l2_threshold: float, num_bits: int) -> int:
  """A Hamming threshold comparable to an L2 threshold on unit descriptors.

  Two unit vectors at L2 distance t make an angle theta = arccos(1 - t^2 / 2);
  for sign bits of random projections the expected fraction of differing bits
  is theta / pi (SimHash). Returns floor(num_bits * theta / pi), e.g. 33 of 128
  bits for t = 0.8. For coordinate signs of learned descriptors this is a
  heuristic starting point, not an exact equivalence.
  """
  cos = np.clip(1.0 - 0.5 * float(l2_threshold) ** 2, -1.0, 1.0)
  return int(np.floor(num_bits * np.arccos(cos) / np.pi))


def match_binary(
  desc_a: np.ndarray,
  desc_b: np.ndarray,
  max_distance: int,
  ratio: float | None = None,
  num_threads: int | None = 1,
) -> np.ndarray:
  """Nearest neighbour in b of every row of a, by Hamming distance (faiss popcount).

  Same pairs as `match_binary_reference` (ties: the lowest index in b, see the
  module doc), without building the [Na, Nb] distance matrix.

  Args:
    desc_a: packed query descriptors [Na, B] (uint8, or stored uint32 bytes).
    desc_b: packed database descriptors [Nb, B].
    max_distance: a match needs a distance <= this many bits.
    ratio: optional Lowe ratio test: also need d1 < ratio * d2 (second-nearest).
    num_threads: faiss OpenMP threads for this call (None: faiss's current
      setting; default 1, see the module doc).

  Returns:
    int64 [M, 2] pairs (index in a, index in b), in order of a.

  Raises:
    ValueError: the packed widths of a and b differ.
  """
  import faiss  # noqa: PLC0415 (loaded on first binary match, as in retrieval.exact_search)

  a, b = np.atleast_2d(as_packed(desc_a)), np.atleast_2d(as_packed(desc_b))
  if a.shape[0] == 0 or b.shape[0] == 0:
    return np.zeros([0, 2], dtype=np.int64)
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(f"packed descriptors must be [N, B], got shapes {a.shape} and {b.shape}")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"packed widths differ: {a.shape[1]} vs {b.shape[1]} bytes")
  if a.shape[1] == 0:  # no bits: every distance is 0 (faiss needs whole bytes)
    return match_binary_reference(a, b, max_distance, ratio)
  a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
  k = 2 if ratio is not None and b.shape[0] > 1 else 1
  previous = faiss.omp_get_max_threads()
  if num_threads is not None:
    faiss.omp_set_num_threads(int(num_threads))
  try:
    distances, indices = faiss.knn_hamming(a, b, k)
  finally:
    faiss.omp_set_num_threads(previous)
  best = distances[:, 0]
  nearest = indices[:, 0]
  keep = best <= max_distance
  if k == 2:
    second = distances[:, 1]
    nearest = np.where(second == best, np.minimum(nearest, indices[:, 1]), nearest)
    keep &= best < ratio * second
  rows = np.nonzero(keep)[0]
  return np.stack([rows, nearest[rows]], axis=1).astype(np.int64)


def match_binary_reference(
  desc_a: np.ndarray, desc_b: np.ndarray, max_distance: int, ratio: float | None = None
) -> np.ndarray:
  """`match_binary` from the full `hamming_distance` matrix (argmin; the former matcher).

  Args:
    desc_a: packed query descriptors [Na, B].
    desc_b: packed database descriptors [Nb, B].
    max_distance: a match needs a distance <= this many bits.
    ratio: optional Lowe ratio test: also need d1 < ratio * d2 (second-nearest).

  Returns:
    int64 [M, 2] pairs (index in a, index in b), in order of a.
  """
  a, b = np.atleast_2d(as_packed(desc_a)), np.atleast_2d(as_packed(desc_b))
  if a.shape[0] == 0 or b.shape[0] == 0:
    return np.zeros([0, 2], dtype=np.int64)
  distances = hamming_distance(a, b)
  nearest = np.argmin(distances, axis=1)
  best = distances[np.arange(len(a)), nearest]
  keep = best <= max_distance
  if ratio is not None and b.shape[0] > 1:
    second = np.partition(distances, 1, axis=1)[:, 1]
    keep &= best < ratio * second
  rows = np.nonzero(keep)[0]
  return np.stack([rows, nearest[rows]], axis=1).astype(np.int64)
