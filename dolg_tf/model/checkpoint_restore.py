"""Restoring checkpoints of a training run: which ones exist, damaged or misfitting ones named.

Training resumes from the latest checkpoint of its run folder, export and the
visualizations restore a run's model from one (`restore_model`). A checkpoint
that does not fit the model of the config (another embedding size, depth, head
or number of classes) is refused naming it (CheckpointMismatchError), as is a
damaged one, e.g. a truncated data file (CheckpointDamagedError, naming the
previous checkpoint).
"""

import os

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf import run_layout
from dolg_tf.model import builder
from dolg_tf.utils.error_text import first_line


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model being built; the message names it."""


class CheckpointDamagedError(CheckpointMismatchError):
  """A checkpoint's files are truncated or corrupt; the message names it.

  Attributes:
    path: the checkpoint prefix.
    previous: the newest earlier checkpoint of its folder whose index exists, or None.
  """

  def __init__(self, message: str, path: str, previous: str | None):
    super().__init__(message)
    self.path = path
    self.previous = previous


# Messages of TensorFlow's checkpoint reader for files that are cut short or garbled.
_DAMAGE_SIGNS = (
  "Read less bytes than requested",
  "sstable",
  "Checksum does not match",
  "truncated",
  "corrupt",
  "Data loss",
)


def checkpoint_number(path: str) -> int:
  """N of a `.../ckpt-N` prefix (-1 if it has none)."""
  tail = path.rsplit("-", 1)[-1]
  return int(tail) if tail.isdigit() else -1


def existing_checkpoints(directory: str) -> list[str]:
  """The prefixes listed in `<directory>/checkpoint` whose `.index` exists, oldest first."""
  state = tf.train.get_checkpoint_state(directory)
  if state is None:
    return []
  paths = [
    p if os.path.isabs(p) or "://" in p else os.path.join(directory, p)
    for p in state.all_model_checkpoint_paths
  ]
  if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  found = [p for p in paths if tf.io.gfile.exists(p + ".index")]
  return sorted(set(found), key=checkpoint_number)


def previous_checkpoint(path: str) -> str | None:
  """The newest checkpoint before `path` in its folder's `checkpoint` list, or None."""
  number = checkpoint_number(path)
  earlier = [
    p
    for p in existing_checkpoints(os.path.dirname(path))
    if checkpoint_number(p) < number and p != path
  ]
  return earlier[-1] if earlier else None


def _damage(error: Exception) -> str | None:
  """What is wrong with a checkpoint whose restore raised `error`, if its files are damaged."""
  text = first_line(error)
  if isinstance(error, IndexError) or "Read less bytes than requested" in text:
    return "a data file is shorter than its index says: truncated"
  if isinstance(error, tf.errors.DataLossError) or any(s in text for s in _DAMAGE_SIGNS):
    return text
  if ".data-" in text and "No such file" in text:
    return f"a data file is missing ({text})"
  return None


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, partial: bool = False) -> None:
  """Restores `path` into `checkpoint`, checking every existing object got its values.

  Args:
    checkpoint: the objects to restore (built, so shapes are known).
    path: the checkpoint prefix.
    partial: the checkpoint may hold more than `checkpoint` (export: no head
      or optimizer).

  Raises:
    CheckpointDamagedError: a file of the checkpoint is truncated, corrupt or
      missing (the checkpoint, the reason and the previous checkpoint named).
    CheckpointMismatchError: a variable is missing or has another shape (the
      checkpoint and the reason named).
  """
  try:
    status = checkpoint.restore(path)
    if partial:
      status.expect_partial()
    status.assert_existing_objects_matched()
  except (ValueError, AssertionError, IndexError, tf.errors.OpError) as e:
    damage = _damage(e)
    if damage is not None:
      previous = previous_checkpoint(path)
      raise CheckpointDamagedError(
        f"checkpoint {path} is damaged ({damage}); "
        + (f"the previous checkpoint is {previous}" if previous else "there is no earlier one"),
        path,
        previous,
      ) from None
    if isinstance(e, tf.errors.NotFoundError):
      raise CheckpointMismatchError(f"checkpoint {path}: not found or unreadable") from None
    raise CheckpointMismatchError(
      f"checkpoint {path} does not fit the model of this config ({first_line(e)}); it was "
      "written with another model section (e.g. embedding_dim, backbone or num_classes): use "
      "that run's config.json, or a new --logdir"
    ) from None


def restore_model(logdir: str, checkpoint: str = "", overrides=None):
  """A training run's model with the weights of one of its checkpoints.

  Args:
    logdir: the run folder (config.json and checkpoints/, see run_layout).
    checkpoint: a checkpoint prefix; default the latest of `logdir`.
    overrides: dict or --params_override string applied to the run's config.

  Returns:
    (the run's ExperimentConfig with the overrides, the restored model).

  Raises:
    FileNotFoundError: no run folder, config or checkpoint (named).
    config_lib.ConfigError: a bad override.
    CheckpointMismatchError: the checkpoint does not fit the run's model
      config, or is damaged (named, with the previous one).
  """
  experiment, model, _ = restore_run(logdir, checkpoint, overrides)
  return experiment, model


def restore_run(logdir: str, checkpoint: str = "", overrides=None):
  """restore_model's (config, model), and the checkpoint prefix it restored."""
  layout = run_layout.RunLayout(logdir)
  if not os.path.isdir(logdir):
    raise FileNotFoundError(f"--logdir: no run folder {logdir}")
  experiment = config_lib.override(config_lib.load_config(layout.config), overrides or {})
  if checkpoint:
    if not tf.io.gfile.glob(checkpoint + ".index"):
      raise FileNotFoundError(f"--checkpoint: no checkpoint {checkpoint} ({checkpoint}.index)")
  else:
    # The newest whose files exist (a damaged latest one may have been deleted by hand).
    existing = existing_checkpoints(layout.checkpoints)
    checkpoint = existing[-1] if existing else None
    if not checkpoint:
      raise FileNotFoundError(f"no checkpoint in {layout.checkpoints}")
  model = builder.build_model(experiment.model, image_size=64)
  try:
    restore_checkpoint(tf.train.Checkpoint(model=model), checkpoint, partial=True)
  except CheckpointDamagedError as e:
    advice = f": export it with --checkpoint={e.previous}" if e.previous else ""
    raise CheckpointDamagedError(str(e) + advice, e.path, e.previous) from None
  return experiment, model, checkpoint
