"""The folders and files of a training run, named once for every stage.

<logdir>/config.json     the ExperimentConfig (dolg_tf.config.save_config)
<logdir>/checkpoints/    tf.train.CheckpointManager
<logdir>/export/<N>/     SavedModels in TF Serving's layout
<logdir>/data/           generated synthetic training data
<logdir>/train/, validation/   TensorBoard summaries
<logdir>/.dolg_train.lock      held (fcntl.flock) by the training run using the folder

`write_failure` tells a write error of the whole file system (disk full, quota,
read-only) from any other, so that commands can name the folder they write to.
"""

import dataclasses
import errno
import os

from dolg_tf import config as config_lib

# The training run's lock file (dolg_tf.utils.dir_lock) inside the run folder.
TRAIN_LOCK_FILE = ".dolg_train.lock"

# Write errors of a whole file system: (errno, the OS's words for it, ours).
_WRITE_FAILURES = (
  (errno.ENOSPC, "No space left on device", "disk full"),
  (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
  (errno.EROFS, "Read-only file system", "read-only file system"),
)


def write_failure(error: BaseException | None) -> str | None:
  """'disk full', 'disk quota exceeded' or 'read-only file system' if `error` is one, else None.

  Looks at `error` and the errors it was raised from: an OSError's errno, or
  the OS's words in the message (TensorFlow's file errors, e.g.
  ResourceExhaustedError on a full disk, carry no errno).
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    code = getattr(error, "errno", None)
    text = str(error)
    for number, words, ours in _WRITE_FAILURES:
      if code == number or words in text:
        return ours
    error = error.__cause__ or error.__context__
  return None


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
  def lock(self) -> str:
    return os.path.join(self.root, TRAIN_LOCK_FILE)

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
