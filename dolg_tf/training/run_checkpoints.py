"""The checkpoints of a training run: resume from the latest, save without leaving half a one.

Checkpoints (tf.train.CheckpointManager) hold the model, the head and the
optimizer (its `iterations` is the global step), so a restarted run resumes at
the saved step with the same optimizer state. TF writes a checkpoint's files
before it atomically rewrites the `checkpoint` index, so a run killed at any
moment (even SIGKILL) leaves the previous checkpoint usable. A checkpoint that
cannot be saved (disk full, read-only file system) leaves no part of it behind
(WriteError); the earlier ones stay.
"""

import glob
import os
import shutil

import tensorflow as tf
from absl import logging

from dolg_tf import run_layout
from dolg_tf.model import checkpoint_restore


class WriteError(OSError):
  """A file of the run folder cannot be written (disk full, read-only); the message names it."""


class RunCheckpoints:
  """The CheckpointManager of one run folder's checkpoints, with one-line failures.

  Attributes:
    checkpoint: the tf.train.Checkpoint saved and restored.
    directory: where the checkpoints are written.
    manager: its tf.train.CheckpointManager.
  """

  def __init__(
    self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int, run_root: str
  ):
    """Manages `checkpoint` in `directory`; errors name `run_root` as --logdir."""
    self.checkpoint = checkpoint
    self.directory = directory
    self.run_root = run_root
    self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)

  def latest(self) -> str | None:
    """The newest checkpoint of the run whose files exist (None if there is none).

    The `checkpoint` file may list one whose files were deleted (a damaged
    checkpoint removed by hand): the one before it is used, with a warning.
    """
    listed = self.manager.latest_checkpoint
    if not listed:
      return None
    existing = checkpoint_restore.existing_checkpoints(self.directory)
    latest = existing[-1] if existing else None
    if latest != listed:
      logging.warning(
        "%s is listed as the latest checkpoint but its files are missing; using %s",
        listed,
        latest or "none (starting from scratch)",
      )
    return latest

  def restore_latest(self) -> str | None:
    """Restores the latest checkpoint, if there is one; returns it.

    Raises:
      checkpoint_restore.CheckpointMismatchError: it does not fit the model.
      checkpoint_restore.CheckpointDamagedError: it is damaged (named, with
        what to delete to resume from the previous one).
    """
    latest = self.latest()
    if not latest:
      return None
    try:
      checkpoint_restore.restore_checkpoint(self.checkpoint, latest)
    except checkpoint_restore.CheckpointDamagedError as e:
      advice = (
        f": to resume from it, delete {latest}.index (and its data file)"
        if e.previous
        else f": delete {self.directory} to start over, or use a new --logdir"
      )
      raise checkpoint_restore.CheckpointDamagedError(str(e) + advice, e.path, e.previous) from None
    return latest

  def save(self, number: int) -> str:
    """Saves checkpoint `number`; returns its prefix.

    Raises:
      WriteError: naming the run folder, if the disk is full or read-only;
        the unfinished checkpoint's files are removed, earlier ones kept.
    """
    try:
      path = self.manager.save(checkpoint_number=number)
    except (tf.errors.OpError, OSError) as e:
      prefix = os.path.join(self.directory, f"ckpt-{number}")
      self._remove_unfinished(prefix)
      reason = run_layout.write_failure(e)
      if reason is None:
        raise
      latest = self.latest()
      resume = (
        f"the last checkpoint is {latest}: free space, then run the same command to resume"
        if latest
        else "there is no earlier checkpoint"
      )
      raise WriteError(
        f"--logdir {self.run_root}: cannot save checkpoint {prefix} ({reason}); "
        f"its unfinished files were removed; {resume}"
      ) from e
    logging.info("Saved checkpoint %s", path)
    return path

  def _remove_unfinished(self, prefix: str) -> None:
    """Removes what a failed save of `prefix` left: its `_temp` folder and unlisted files."""
    shutil.rmtree(prefix + "_temp", ignore_errors=True)
    leftovers = glob.glob(os.path.join(self.directory, "checkpoint.tmp*"))
    if prefix not in self.manager.checkpoints:
      leftovers += glob.glob(glob.escape(prefix) + ".index")
      leftovers += glob.glob(glob.escape(prefix) + ".data-*")
    for path in leftovers:
      try:
        os.remove(path)
      except OSError:
        pass
