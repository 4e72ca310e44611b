"""The interface of pipeline.run_extraction: the extractor protocols, run options and results.

ExtractorProtocol is what every extractor has (extractor.Extractor is one);
the optional capabilities are declared protocols too, checked once per run:
Preprocessing (the pipeline loads the images itself: max_pixels, the memory
budget before decoding), SizeLimited (its own smallest image side), Batching
(`extract_batch`, batch_size > 1) and OwnWriter (DELG's writer of its two
files). RunOptions holds how a run runs, ExtractionSummary what it did, and
ExtractionStopped says why it stopped early.
"""

import dataclasses
from typing import Protocol, runtime_checkable

from dolg_tf.extraction import output_folder
from dolg_tf.utils import images as images_lib

OUTPUT_FORMATS = ("per_image", "shards")


# ----------------------------------------------------------------------------- the extractor


@runtime_checkable
class ExtractorProtocol(Protocol):
  """What run_extraction needs of an extractor (extractor.Extractor is one).

  Attributes:
    suffix: the per-image file suffix of its descriptors (run_extraction's default).
  """

  suffix: str

  def load_and_preprocess(self, path: str, box=None):
    """The model input of an image file (thread-safe, no TensorFlow)."""

  def extract(self, image):
    """A float32 [D] descriptor, or the result its own writer writes (OwnWriter)."""


@runtime_checkable
class Preprocessing(Protocol):
  """An extractor whose images the pipeline loads itself (max_pixels, the memory budget)."""

  def preprocess(self, image, box=None):
    """The model input of a decoded RGB uint8 image (thread-safe, no TensorFlow)."""


@runtime_checkable
class SizeLimited(Protocol):
  """An extractor that accepts smaller images than image_loading.MIN_IMAGE_SIZE (or only larger)."""

  min_input_size: int


@runtime_checkable
class Batching(Protocol):
  """An extractor that runs several images of one size in one forward (batch_size > 1)."""

  def extract_batch(self, images: list) -> list:
    """One result per image, or the exception that image raised."""


@runtime_checkable
class OwnWriter(Protocol):
  """An extractor that may write its results itself (DELG's local + global files)."""

  def make_writer(self, output_dir: str):
    """A writer (`existing_ids`, `write(id, result)`, `flush`; no disk access yet), or None."""


# ----------------------------------------------------------------------------- options, results


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How run_extraction runs (see its Args)."""

  output_format: str = "per_image"
  suffix: str | None = None
  num_threads: int = 2
  prefetch: int = 8
  shard_size: int = 100_000
  log_interval: float = 30.0
  max_pixels: int | None = None
  batch_size: int = 1
  max_bytes_in_flight: int | None = None

  def check(self, extractor: ExtractorProtocol) -> None:
    """Raises ValueError for a bad value or one `extractor` cannot use."""
    name = type(extractor).__name__
    if self.output_format not in OUTPUT_FORMATS:
      raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
    if self.num_threads < 1 or self.prefetch < 1:
      raise ValueError(
        f"num_threads and prefetch must be >= 1, got {self.num_threads}, {self.prefetch}"
      )
    if self.max_bytes_in_flight is not None and self.max_bytes_in_flight < 1:
      raise ValueError(f"max_bytes_in_flight must be positive, got {self.max_bytes_in_flight}")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if self.batch_size > 1 and not isinstance(extractor, Batching):
      raise ValueError(f"{name} has no extract_batch: batch_size unused")
    if self.max_pixels is not None and self.max_pixels < 1:
      raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
    if self.max_pixels not in (None, images_lib.MAX_PIXELS) and not isinstance(
      extractor, Preprocessing
    ):
      raise ValueError(f"{name} has no preprocess(image, box): max_pixels unused")


@dataclasses.dataclass
class ExtractionSummary:
  """What a run did.

  Attributes:
    total: images requested.
    done: descriptors written by this run.
    skipped: images whose output already existed.
    failed: images that could not be read, described or written.
    seconds: wall time of the run.
    failures: (image_id, path, reason) of every failure.
    stopped: why the run stopped early ('disk full', 'read-only file
      system', ...; see ExtractionStopped), '' if it did not.
  """

  total: int = 0
  done: int = 0
  skipped: int = 0
  failed: int = 0
  seconds: float = 0.0
  failures: list = dataclasses.field(default_factory=list)
  stopped: str = ""

  @property
  def exit_code(self) -> int:
    """0 unless there was work and no image has a descriptor at the end.

    An image "succeeded" if it has a descriptor after the run: written now or
    found from an earlier run. So a run where every image failed returns 1,
    while re-running a finished collection (everything skipped, any known-bad
    files failing again) returns 0, as its first run did. An empty input
    returns 0.
    """
    return 1 if self.failed > 0 and self.done + self.skipped == 0 else 0


class ExtractionStopped(output_folder.OutputError):
  """The output folder cannot take more files (disk full, read-only, failures file unwritable).

  Attributes:
    summary: the ExtractionSummary of the run up to the stop.
  """

  def __init__(self, message: str, summary: ExtractionSummary):
    super().__init__(message)
    self.summary = summary
