"""An inverted file over visual words for ASMK / ASMK* (and VLAD) retrieval.

    ivf = InvertedFile.build(similarity, [(descriptors, words), ...])
    ranks, scores = ivf.search(query_descriptors, query_words, k=100)
    scores = ivf.scores(query_descriptors, query_words, candidates=top_100)
    ivf.save("index.ivf.npz"); ivf = InvertedFile.load("index.ivf.npz", similarity)

Layout: every (image, visual word) entry of the database, sorted by word:
`offsets` [num_words + 1] delimits each word's posting list in `images`
(int32 image ids) and `rows` (the image's aggregated residual of that word,
float32 [N, d] for ASMK, packed uint8 [N, d / 8] for ASMK*); `word_counts`
[num_images] keeps each image's number of words for the normalisation.

Scoring a query touches only the posting lists of the query's words: for each
of its words w, the rows of w's list are compared with the query's row of w
(asmk_similarity.AggregatedSimilarity.word_similarities) and the selectivity
values summed per image (np.add.at), then divided by sqrt(n_query n_image)
with L2 normalisation. The scores equal the pairwise
AggregatedSimilarity.compare of every database image (tested against it),
including DELF's -1.0 for an empty side; an image sharing no word scores 0.

The restricted mode (`candidates`) keeps only the posting entries of the
given images before comparing rows, for re-ranking a short list.

VLAD has no visual words: its "inverted file" is the dense matrix of the
aggregated vectors (one row per image) and a query is scored by one
matrix-vector product.

Saved as one .npz (np.savez, loaded with allow_pickle=False): the arrays plus
a small JSON header (format version, aggregation type, dimensionality).
"""

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from dolg_tf.retrieval import asmk_similarity
from dolg_tf.utils import files as file_utils

FORMAT_VERSION = 1


@dataclasses.dataclass
class InvertedFile:
  """Posting lists of one database (module doc); build with `build` or `load`.

  Attributes:
    similarity: the AggregatedSimilarity scoring with it.
    offsets: int64 [num_words + 1] posting list bounds (ASMK / ASMK*).
    images: int32 [N] image of each entry.
    rows: [N, d] aggregated residual (float32) or packed bits (uint8) of
      each entry; VLAD: [num_images, D] the aggregated vectors.
    word_counts: int32 [num_images] visual words per image.
  """

  similarity: asmk_similarity.AggregatedSimilarity
  offsets: np.ndarray
  images: np.ndarray
  rows: np.ndarray
  word_counts: np.ndarray

  @property
  def num_images(self) -> int:
    return len(self.word_counts)

  @classmethod
  def build(
    cls,
    similarity: asmk_similarity.AggregatedSimilarity,
    aggregated: Iterable[tuple[np.ndarray, np.ndarray | None]],
  ) -> "InvertedFile":
    """The inverted file of a database, image i being the i-th (descriptors, words).

    Raises:
      ValueError: descriptors that do not fit their words (asmk_similarity),
        or images whose rows differ in width (named by index).
    """
    all_rows, all_words, all_images, counts = [], [], [], []
    for i, (descriptors, words) in enumerate(aggregated):
      if similarity.aggregation_type == asmk_similarity.VLAD:
        all_rows.append(np.asarray(descriptors, np.float32).reshape(1, -1))
        counts.append(1)
        continue
      words = np.asarray(words, np.int64).reshape(-1)
      counts.append(len(words))
      if not len(words):
        continue
      rows = similarity.rows(descriptors, len(words), f"of database image {i}")
      if all_rows and rows.shape[1] != all_rows[0].shape[1]:
        raise ValueError(
          f"database image {i}: {rows.shape[1]} values per word, others {all_rows[0].shape[1]}"
        )
      all_rows.append(rows if similarity.binarized else rows.astype(np.float32))
      all_words.append(words)
      all_images.append(np.full(len(words), i, np.int32))
    word_counts = np.asarray(counts, np.int32)
    dtype = np.uint8 if similarity.binarized else np.float32
    width = all_rows[0].shape[1] if all_rows else 0
    rows = np.concatenate(all_rows) if all_rows else np.zeros((0, width), dtype)
    if similarity.aggregation_type == asmk_similarity.VLAD:
      return cls(similarity, np.zeros(1, np.int64), np.zeros(0, np.int32), rows, word_counts)
    words = np.concatenate(all_words) if all_words else np.zeros(0, np.int64)
    images = np.concatenate(all_images) if all_images else np.zeros(0, np.int32)
    order = np.argsort(words, kind="stable")
    num_words = int(words.max()) + 1 if len(words) else 0
    offsets = np.zeros(num_words + 1, np.int64)
    np.cumsum(np.bincount(words, minlength=num_words), out=offsets[1:])
    return cls(similarity, offsets, images[order], rows[order], word_counts)

  def _entries(self, query_words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(posting entry ids, the query row each compares with) of the query's words."""
    known = query_words[query_words < len(self.offsets) - 1]
    starts, ends = self.offsets[known], self.offsets[known + 1]
    lengths = ends - starts
    query_row = np.repeat(np.nonzero(query_words < len(self.offsets) - 1)[0], lengths)
    # Entry ids: each start repeated over its list, plus the position in the list.
    firsts = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    entries = firsts + np.arange(int(lengths.sum()))
    return entries, query_row

  def scores(
    self,
    query_descriptors: np.ndarray,
    query_words: np.ndarray | None,
    candidates: Sequence[int] | np.ndarray | None = None,
  ) -> np.ndarray:
    """The similarity of the query to every database image, or to `candidates`.

    Args:
      query_descriptors: the query's 1-D aggregated vector.
      query_words: its sorted visual words (ASMK / ASMK*).
      candidates: optional database indices: only these are scored.

    Returns:
      float64 [num_images] (or [len(candidates)], in their order).
    """
    similarity = self.similarity
    if similarity.aggregation_type == asmk_similarity.VLAD:
      rows = self.rows if candidates is None else self.rows[np.asarray(candidates, np.int64)]
      return rows.astype(np.float64) @ np.asarray(query_descriptors, np.float64).reshape(-1)
    query_words = np.asarray(query_words, np.int64).reshape(-1)
    candidates = None if candidates is None else np.asarray(candidates, np.int64)
    totals = np.zeros(self.num_images)
    if len(query_words):
      query_rows = similarity.rows(query_descriptors, len(query_words), "of the query")
      entries, query_row = self._entries(query_words)
      if candidates is not None:
        wanted = np.zeros(self.num_images, bool)
        wanted[candidates] = True
        keep = wanted[self.images[entries]]
        entries, query_row = entries[keep], query_row[keep]
      values = similarity.word_similarities(query_rows[query_row], self.rows[entries])
      np.add.at(totals, self.images[entries], values)
    counts = self.word_counts if candidates is None else self.word_counts[candidates]
    totals = totals if candidates is None else totals[candidates]
    empty = (counts == 0) | (len(query_words) == 0)
    normalizer = similarity.normalizer(max(len(query_words), 1), np.maximum(counts, 1))
    return np.where(empty, asmk_similarity.EMPTY_SIMILARITY, totals / normalizer)

  def search(
    self, query_descriptors: np.ndarray, query_words: np.ndarray | None, k: int = 0
  ) -> tuple[np.ndarray, np.ndarray]:
    """(database indices [k], scores [k]) best first; ties in index order; k=0: all."""
    scores = self.scores(query_descriptors, query_words)
    k = min(k or self.num_images, self.num_images)
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]

  def nbytes(self) -> dict[str, int]:
    """Memory held by each array and in total, in bytes."""
    sizes = {
      name: int(getattr(self, name).nbytes) for name in ("offsets", "images", "rows", "word_counts")
    }
    sizes["total"] = sum(sizes.values())
    return sizes

  def save(self, path: str) -> None:
    """Writes the arrays and a JSON header to one .npz, atomically."""
    header = {
      "format_version": FORMAT_VERSION,
      "aggregation_type": int(self.similarity.aggregation_type),
      "feature_dimensionality": self.similarity.feature_dimensionality,
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with file_utils.atomic_open(path, "wb") as f:
      np.savez(
        f,
        header=np.array(json.dumps(header)),
        offsets=self.offsets,
        images=self.images,
        rows=self.rows,
        word_counts=self.word_counts,
      )

  @classmethod
  def load(cls, path: str, similarity: asmk_similarity.AggregatedSimilarity) -> "InvertedFile":
    """Reads `save`'s file (allow_pickle=False) for `similarity`'s aggregation.

    Raises:
      ValueError: not such a file, another format version or another
        aggregation type / dimensionality than `similarity` (path named).
    """
    try:
      with np.load(path, allow_pickle=False) as data:
        header = json.loads(str(data["header"]))
        arrays = {n: data[n] for n in ("offsets", "images", "rows", "word_counts")}
    except (KeyError, ValueError, OSError) as e:
      if isinstance(e, FileNotFoundError):
        raise
      raise ValueError(f"{path}: not an inverted file ({e})") from e
    expected = (
      FORMAT_VERSION,
      int(similarity.aggregation_type),
      similarity.feature_dimensionality,
    )
    found = (
      header.get("format_version"),
      header.get("aggregation_type"),
      header.get("feature_dimensionality"),
    )
    if found != expected:
      raise ValueError(
        f"{path}: (format version, aggregation type, dimensionality) {found}, expected {expected}"
      )
    return cls(similarity, **arrays)
