r"""Trains the visual-word codebook of VLAD / ASMK / ASMK* with faiss k-means.

  dolg-train-codebook --features_dir=out/index[,more/dirs] \
      [--image_list=index_list.txt] [--suffixes=.delg_local,.delf] \
      --codebook_size=1024 [--max_descriptors=1000000 --iterations=20 --seed=0] \
      --output_dir=codebook

Reads the local descriptors of the DelfFeatures files in --features_dir
(DELG's `<name>.delg_local`, DELF's `<name>.delf`; all files with one of
--suffixes, or only the names of --image_list, one per line), keeps a uniform
random sample of at most --max_descriptors of them (only that sample and one
file are in memory: codebook.sample_descriptors), clusters it into
--codebook_size visual words, and writes to --output_dir (codebook.py):
`codebook_tfckpt/codebook` (the checkpoint DELF's extractor restores),
`codebook.npy`, `codebook_config.json` (settings and statistics) and
`aggregation_config.pbtxt`, a DELF AggregationConfig (ASMK*) whose
codebook_path points at the checkpoint, ready for dolg-aggregate. An
existing codebook in --output_dir is refused unless --overwrite. Unreadable
files are skipped and counted. See docs/AGGREGATION.md.
"""

import dataclasses
import os
import time

from absl import flags

from dolg_tf.io import aggregation_config_io
from dolg_tf.retrieval import codebook as codebook_lib
from dolg_tf.utils import cli
from dolg_tf.utils import files as file_utils

FLAGS = flags.FLAGS
DEFAULT_SUFFIXES = ".delg_local,.delf"


@dataclasses.dataclass(frozen=True)
class CodebookConfig:
  """k-means settings (flags of the same names).

  Attributes:
    codebook_size: visual words K.
    max_descriptors: bound on the descriptors sampled for k-means.
    iterations: k-means iterations.
    seed: sampling and k-means seed.
  """

  codebook_size: int = 1024
  max_descriptors: int = 1_000_000
  iterations: int = 20
  seed: int = 0

  def __post_init__(self):
    for name in ("codebook_size", "max_descriptors", "iterations"):
      if getattr(self, name) <= 0:
        raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
    if self.max_descriptors < self.codebook_size:
      raise ValueError(
        f"--max_descriptors ({self.max_descriptors}) must be >= --codebook_size "
        f"({self.codebook_size})"
      )


def define_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, str]:
  """Defines the command's flags (a second call is a no-op); returns the config flags."""
  if "features_dir" not in flag_values:
    for name, default, help_text in (
      ("features_dir", None, "Local feature folder(s), comma-separated."),
      ("suffixes", DEFAULT_SUFFIXES, "Local feature file suffixes, comma-separated."),
      ("image_list", "", "Optional text file of image names (one per line) to use."),
      ("output_dir", None, "Where the codebook files are written."),
    ):
      flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    flags.DEFINE_bool(
      "overwrite", False, "Replace a codebook already in --output_dir.", flag_values=flag_values
    )
  return cli.define_config_flags(CodebookConfig(), flag_values=flag_values)


def feature_files(folders, suffixes, names=None) -> tuple[list[str], list[str]]:
  """(files, missing names): the local feature files of `folders` (sorted), or of `names`.

  Raises:
    FileNotFoundError: naming a folder that does not exist.
  """
  for folder in folders:
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"{folder}: local features folder not found")
  if names is None:
    found = []
    for folder in folders:
      found += sorted(
        os.path.join(folder, entry)
        for entry in os.listdir(folder)
        if entry.endswith(suffixes) and not entry.startswith(".")
      )
    return found, []
  found, missing = [], []
  for name in names:
    candidates = [os.path.join(f, name + s) for f in folders for s in suffixes]
    hit = next((c for c in candidates if os.path.isfile(c)), None)
    if hit is None:
      missing.append(name)
    else:
      found.append(hit)
  return found, missing


def _config_text(centroids_shape) -> str:
  config = aggregation_config_io.AggregationConfig(
    codebook_size=centroids_shape[0],
    feature_dimensionality=centroids_shape[1],
    aggregation_type=aggregation_config_io.ASMK_STAR,
    codebook_path="codebook_tfckpt/codebook",
    num_assignments=1,
    use_regional_aggregation=False,
    feature_batch_size=100,
  )
  return aggregation_config_io.config_to_text(config)


def _inputs(config):
  folders = [cli.resolve_path(f) for f in FLAGS.features_dir.split(",") if f]
  suffixes = tuple(s for s in FLAGS.suffixes.split(",") if s)
  if not suffixes:
    raise cli.UserError("--suffixes is empty")
  try:
    names = (
      codebook_lib.read_image_names(cli.resolve_path(FLAGS.image_list))
      if FLAGS.image_list
      else None
    )
    paths, missing = feature_files(folders, suffixes, names)
  except (OSError, ValueError) as e:
    raise cli.UserError(cli.error_message(e)) from e
  if missing:
    print(f"{len(missing)} listed images have no local feature file (first: {missing[0]})")
  if not paths:
    raise cli.UserError(f"no local feature files ({', '.join(suffixes)}) in {', '.join(folders)}")
  return folders, suffixes, paths, missing


def main(argv):
  del argv  # unused
  for name in ("features_dir", "output_dir"):
    if not FLAGS[name].value:
      raise cli.UserError(f"--{name} is required")
  try:
    config = dataclasses.replace(CodebookConfig(), **cli.given_overrides(define_flags(FLAGS)))
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  output_dir = cli.resolve_path(FLAGS.output_dir)
  if os.path.exists(os.path.join(output_dir, codebook_lib.NPY_FILE)) and not FLAGS.overwrite:
    raise cli.UserError(f"--output_dir: {output_dir} already holds a codebook (--overwrite)")
  folders, suffixes, paths, missing = _inputs(config)
  print(f"sampling at most {config.max_descriptors} descriptors from {len(paths)} files")
  start = time.monotonic()
  try:
    sample, stats = codebook_lib.sample_descriptors(paths, config.max_descriptors, config.seed)
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  sampled = time.monotonic()
  print(f"k-means: {len(sample)} x {sample.shape[1]} -> {config.codebook_size} visual words")
  try:
    centroids, objective = codebook_lib.train_kmeans(
      sample, config.codebook_size, config.iterations, config.seed, verbose=True
    )
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  trained = time.monotonic()
  record = dataclasses.asdict(config)
  record.update(
    features_dirs=folders,
    suffixes=list(suffixes),
    image_list=cli.resolve_path(FLAGS.image_list) or None,
    files=stats["files"],
    files_failed=len(stats["files_failed"]),
    files_missing=len(missing),
    descriptors_seen=stats["descriptors_seen"],
    descriptors_used=stats["descriptors_kept"],
    objective=objective,
    mean_squared_error=objective / len(sample),
    seconds_sampling=round(sampled - start, 3),
    seconds_kmeans=round(trained - sampled, 3),
  )
  try:
    written = codebook_lib.save_codebook(output_dir, centroids, record)
    config_path = os.path.join(output_dir, "aggregation_config.pbtxt")
    file_utils.atomic_write_text(config_path, _config_text(centroids.shape))
  except OSError as e:
    raise cli.UserError(f"--output_dir: {cli.error_message(e)}") from e
  print(
    f"codebook {centroids.shape[0]} x {centroids.shape[1]} from {len(sample)} descriptors "
    f"({stats['descriptors_seen']} seen in {stats['files']} files, "
    f"{len(stats['files_failed'])} unreadable): sampling {sampled - start:.1f}s, "
    f"k-means {trained - sampled:.1f}s ({config.iterations} iterations), "
    f"mean squared error {objective / len(sample):.4g}"
  )
  print(f"checkpoint: {written['checkpoint']}\nnpy: {written['npy']}")
  print(f"config: {written['config']}\naggregation config: {config_path}")


def run():
  """The `dolg-train-codebook` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
