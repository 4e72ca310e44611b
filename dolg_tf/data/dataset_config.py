"""The settings of one dataset build in one object (dataset_writer and beam_dataset take it).

    config = DatasetBuildConfig(
        output_directory="gldv2/tfrecords", train_directory="gldv2/train",
        train_clean_csv_path="gldv2/train_clean.csv", num_shards=128)
    summary = dataset_writer.build_dataset(config)

The commands (build_image_dataset.py, beam_build_dataset.py) generate one
flag per field with cli.define_config_flags (`define_flags`), named as the
field; a given flag overrides the field's default (`from_flags`). The Beam
command has no --num_workers / --log_interval: its workers are the runner's.

A frozen plain dataclass, no TensorFlow: `--help` and flag errors answer
before TensorFlow loads.
"""

import dataclasses
import os
import re

from absl import flags

from dolg_tf.data import dataset_plan
from dolg_tf.utils import cli

# The fields only the single-process builder uses.
LOCAL_FIELDS = ("num_workers", "log_interval")
# The three sources of images; `check_complete` wants exactly one.
GLDV2_FIELDS = ("train_csv_path", "train_clean_csv_path")
OWN_FIELDS = ("image_folder", "labels_csv")


def _cpu_count() -> int:
  return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class DatasetBuildConfig:
  """What to build and how (module doc); the values are checked when it is made.

  Attributes:
    output_directory: folder for the TFRecords and CSVs (created if needed).
    train_directory: folder of the GLDv2 training images (with the GLDv2 CSVs).
    train_csv_path: GLDv2 train.csv (id,url,landmark_id).
    train_clean_csv_path: GLDv2 train_clean.csv (landmark_id,images); selects
      the images when given (train.csv is then only cross-checked).
    image_folder: your own images, one sub-folder per class (the class is the
      folder's name); instead of the GLDv2 CSVs.
    labels_csv: your own images as a CSV with columns path,label (paths
      relative to images_dir, else to the CSV's folder); instead of the others.
    images_dir: the folder the paths of labels_csv are relative to.
    allow_outside_images_dir: read labels_csv paths that leave that folder
      (absolute elsewhere or '..'); otherwise they are failures, not read.
    min_images_per_class: classes with fewer images listed (files of a class
      folder, rows of a CSV) are dropped and listed in dropped_classes.csv.
    num_shards: number of training shards.
    num_validation_shards: number of validation shards (0: num_shards).
    validation_split_size: fraction of the found images used for validation,
      in [0, 1).
    seed: seed of the split and of the record order.
    num_workers: processes that decode and re-encode images (1: in-process;
      default: one per CPU). Single-process builder only.
    log_interval: seconds between progress logs. Single-process builder only.
  """

  output_directory: str = ""
  train_directory: str = ""
  train_csv_path: str | None = None
  train_clean_csv_path: str | None = None
  image_folder: str | None = None
  labels_csv: str | None = None
  images_dir: str | None = None
  allow_outside_images_dir: bool = False
  min_images_per_class: int = 1
  num_shards: int = 128
  num_validation_shards: int = 0
  validation_split_size: float = 0.2
  seed: int = 0
  num_workers: int = dataclasses.field(default_factory=_cpu_count)
  log_interval: float = 30.0

  def __post_init__(self):
    self.shard_counts()
    dataset_plan.check_fraction(self.validation_split_size)
    dataset_plan.check_min_images(self.min_images_per_class)
    if self.num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
    if self.log_interval < 0:
      raise ValueError(f"log_interval must be >= 0, got {self.log_interval}")

  def shard_counts(self) -> dict[str, int]:
    """{split: number of shards} (dataset_plan.check_shard_counts).

    Raises:
      ValueError: a count < 1 (naming the field).
    """
    return dataset_plan.check_shard_counts(self.num_shards, self.num_validation_shards or None)

  def check_complete(self) -> None:
    """Refuses a config without an output folder or without exactly one source of images.

    Not in __post_init__: the flags' template has none.

    Raises:
      ValueError: naming the fields.
    """
    if not self.output_directory:
      raise ValueError("output_directory is required")
    given = [name for name in GLDV2_FIELDS + OWN_FIELDS if getattr(self, name)]
    if not given:
      raise ValueError("give image_folder, labels_csv or train_csv_path/train_clean_csv_path")
    if len(given) > 1 and set(given) != set(GLDV2_FIELDS):
      raise ValueError(f"give one source of images, not {' and '.join(given)}")
    if given[0] in GLDV2_FIELDS and not self.train_directory:
      raise ValueError(f"train_directory is required with {given[0]}")
    if given[0] not in GLDV2_FIELDS and self.train_directory:
      raise ValueError(f"train_directory is for the GLDv2 CSVs, not {given[0]}")
    if self.images_dir and given[0] != "labels_csv":
      raise ValueError("images_dir is for labels_csv only")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, local: bool = True) -> None:
  """One flag per DatasetBuildConfig field (module doc); a second call is a no-op.

  Args:
    flag_values: where to define them.
    local: also the LOCAL_FIELDS' flags (--num_workers, --log_interval).
  """
  cli.define_config_flags(
    DatasetBuildConfig(), skip=() if local else LOCAL_FIELDS, flag_values=flag_values
  )


def from_flags(
  flag_values: flags.FlagValues = flags.FLAGS, local: bool = True
) -> DatasetBuildConfig:
  """The complete DatasetBuildConfig the given flags (of `define_flags`) describe.

  Raises:
    cli.UserError: a missing folder or a value out of range, naming the flags.
  """
  names = [f.name for f in dataclasses.fields(DatasetBuildConfig)]
  mapping = {name: name for name in names if local or name not in LOCAL_FIELDS}
  try:
    config = DatasetBuildConfig(**cli.given_overrides(mapping, flag_values))
    config.check_complete()
  except ValueError as e:
    # The fields are the flags' names: "--num_shards must be >= 1, got 0".
    raise cli.UserError(re.sub(rf"\b({'|'.join(mapping)})\b", r"--\1", str(e))) from None
  return config
