"""The folders and files of a training run, named once for every stage.

<logdir>/config.json     the ExperimentConfig (dolg_tf.config.save_config)
<logdir>/checkpoints/    tf.train.CheckpointManager
<logdir>/export/<N>/     SavedModels in TF Serving's layout
<logdir>/data/           generated synthetic training data
<logdir>/train/, validation/   TensorBoard summaries
"""

import dataclasses
import os

from dolg_tf import config as config_lib


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Paths inside one run folder."""

  root: str

  @property
  def config(self) -> str:
    return os.path.join(self.root, config_lib.CONFIG_FILENAME)

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.root, "checkpoints")

  @property
  def export(self) -> str:
    return os.path.join(self.root, "export")

  @property
  def data(self) -> str:
    return os.path.join(self.root, "data")

  @property
  def train_summaries(self) -> str:
    return os.path.join(self.root, "train")

  @property
  def validation_summaries(self) -> str:
    return os.path.join(self.root, "validation")

  def latest_export(self) -> str | None:
    """The highest numbered version folder under `export`, or None."""
    return latest_version(self.export)


def latest_version(export_base: str) -> str | None:
  """`<export_base>/<N>` for the largest numeric N, or None if there is none."""
  if not os.path.isdir(export_base):
    return None
  versions = [int(d) for d in os.listdir(export_base) if d.isdigit()]
  return os.path.join(export_base, str(max(versions))) if versions else None
