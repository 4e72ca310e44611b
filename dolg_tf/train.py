"""Trains DOLG/DELG with tf.distribute, writes checkpoints and a SavedModel.

  bazel run //dolg_tf:train              # experiment dolg_synthetic: ~2 minutes on 2 CPU cores
  dolg-train --experiment=dolg_gldv2 --logdir=runs/r101 \
      --train_file_pattern='gldv2/train-*' --validation_file_pattern='gldv2/validation-*' \
      --backbone_depth=101 --epochs=100 --warmup_epochs=5 \
      --distribution_strategy=mirrored --num_gpus=8
  dolg-train --experiment=dolg_gldv2 --config_file=my.yaml \
      --params_override='train.batch_size=32,model.embedding_dim=256'

Settings come from one ExperimentConfig (dolg_tf/config.py): the named
--experiment, then each --config_file (YAML/JSON), then --params_override, then
the field flags below (each named after its field and defaulting to "not
given"). The resolved config is written to <logdir>/config.json. Re-running
with the same --logdir resumes from the latest checkpoint; a config that
differs from the saved one is refused (the differing fields are listed) unless
--allow_config_change, which logs each change. So is a run folder whose
config.json is missing or unreadable while it holds checkpoints (the config
they were trained with is unknown). One run at a time per --logdir: a second
is refused naming the first's pid and host (an fcntl.flock on
<logdir>/.dolg_train.lock, which a killed run cannot leave behind).

Exit status: 0 when done; 2 with one line `dolg-train: error: ...` for a user
error (a flag or field, a training file that is missing, corrupt or holds a
label outside [0, num_classes), a checkpoint that does not fit the config or
is damaged, a run folder in use, full or read-only); 1 with one line
`dolg-train: error: training diverged at step N: ...` when the run diverges
(a NaN/inf loss or weights, or training accuracy at chance for
--chance_window_steps steps after the warm-up; docs/CONVERGENCE.md): the line
names the last finite loss, the checkpoint kept (nothing is saved or exported
after the divergence) and what to try; 143 (128 + SIGTERM, as a process killed by
SIGTERM) after a SIGTERM, once the checkpoint of the current step is saved, so
that schedulers see a preempted job and a re-run resumes.
"""

import dataclasses
import json
import os
import signal
import sys

from absl import flags, logging

from dolg_tf import config as config_lib
from dolg_tf import experiments, run_layout
from dolg_tf.data import input_pipeline, synthetic
from dolg_tf.export import versions
from dolg_tf.model import checkpoint_restore
from dolg_tf.training import run_checkpoints, warm_start
from dolg_tf.training import trainer as trainer_lib
from dolg_tf.utils import cli, dir_lock
from dolg_tf.utils.error_text import first_line

FLAGS = flags.FLAGS

# The exit status of a diverged run (one line; the project's "work done, none of it usable").
EXIT_DIVERGED = 1
# The exit status of a run stopped by SIGTERM (checkpoint saved), as a shell reports a
# process killed by SIGTERM: schedulers treat the job as preempted, not as done.
EXIT_PREEMPTED = 128 + signal.SIGTERM

# Resuming may change these freely: they do not change what is trained.
RUNTIME_FIELDS = frozenset(
  {
    "train.log_every",
    "train.checkpoint_every",
    "train.max_checkpoints",
    "train.validate_every",
    "train.validation_steps",
    "train.export_at_end",
    "train.distribution_strategy",
    "train.num_gpus",
    "train.tpu",
    "train.chance_window_steps",
    "train.chance_window_min_epochs",
    "train.chance_margin",
    "data.skip_corrupt_records",
    "train.init_from",  # read only by a run without a checkpoint of its own
  }
) | {f"export.{f.name}" for f in dataclasses.fields(config_lib.ExportConfig)}


# The sections whose fields get a flag each (model.name is chosen by --experiment).
FIELD_FLAG_SECTIONS = ("model", "data", "train", "export")


def _define_field_flags(flag_values: flags.FlagValues) -> dict[str, str]:
  """One override flag per config field (named as the field); returns flag -> field path."""
  return cli.define_config_flags(
    config_lib.ExperimentConfig(),
    sections=FIELD_FLAG_SECTIONS,
    skip=("model.name",),
    flag_values=flag_values,
    default_help="from --experiment",
  )


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags (a second call is a no-op)."""
  if "experiment" not in flag_values:
    flags.DEFINE_enum(
      "experiment",
      experiments.DEFAULT,
      list(experiments.NAMES),
      "Named preset.",
      flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
      "config_file", [], "YAML/JSON config file(s), applied in order.", flag_values=flag_values
    )
    flags.DEFINE_string(
      "params_override",
      "",
      "Overrides: 'train.batch_size=8,model.embedding_dim=128' or YAML.",
      flag_values=flag_values,
    )
    flags.DEFINE_string(
      "logdir",
      "runs/demo",
      "Run folder: checkpoints, summaries, config, export.",
      flag_values=flag_values,
    )
    flags.DEFINE_bool(
      "allow_config_change",
      False,
      "Resume even if the config differs from <logdir>/config.json.",
      flag_values=flag_values,
    )
    flags.DEFINE_bool(
      "export_only",
      False,
      "Only export the latest checkpoint of --logdir.",
      flag_values=flag_values,
    )
  _define_field_flags(flag_values)


def experiment_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.ExperimentConfig:
  """The ExperimentConfig the flags describe (see the module doc for the order).

  Raises:
    config_lib.ConfigError: an unknown field or a bad value (named).
  """
  config = experiments.get(flag_values.experiment)
  for path in flag_values.config_file:
    config = config_lib.override(config, config_lib.load_config_dict(path))
  config = config_lib.override(config, flag_values.params_override)
  field_flags = _define_field_flags(flag_values)
  config = config_lib.override(config, cli.given_overrides(field_flags, flag_values))
  for name in ("train_file_pattern", "validation_file_pattern"):
    if getattr(config.data, name):
      config = config_lib.override(
        config, {"data": {name: cli.resolve_path(getattr(config.data, name))}}
      )
  for name in ("imagenet_checkpoint", "init_from"):
    if getattr(config.train, name):
      config = config_lib.override(
        config, {"train": {name: cli.resolve_path(getattr(config.train, name))}}
      )
  return config


def check_resume(
  config: config_lib.ExperimentConfig,
  layout: run_layout.RunLayout,
  allow_config_change: bool = False,
) -> None:
  """Refuses to resume a run whose saved config differs (unless `allow_config_change`).

  A run folder with checkpoints but without a readable config.json is refused
  too: the config its checkpoints were trained with is unknown.

  Raises:
    cli.UserError: listing the differing fields, or naming the missing or
      unreadable config.json.
  """
  unknown = None
  if not os.path.exists(layout.config):
    if checkpoint_restore.existing_checkpoints(layout.checkpoints):
      unknown = f"{layout.config}: missing, but {layout.checkpoints} holds checkpoints"
  else:
    try:
      saved = config_lib.load_config_dict(layout.config)
    except (config_lib.ConfigError, OSError) as e:
      unknown = str(e)
  if unknown is not None:
    if not allow_config_change:
      raise cli.UserError(
        f"{unknown}; the config the run's checkpoints were trained with is unknown: use a new "
        "--logdir, restore the file, or give --allow_config_change to resume with this config"
      )
    logging.warning("%s; resuming with this config (--allow_config_change)", unknown)
    return
  if not os.path.exists(layout.config):
    return
  changes = {
    k: v
    for k, v in config_lib.differences(saved, config.as_dict()).items()
    if k not in RUNTIME_FIELDS
  }
  if not changes:
    return
  listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
  if not allow_config_change:
    raise cli.UserError(
      f"{layout.config}: the run was started with another config ({listed}); "
      "use a new --logdir, or --allow_config_change to resume with the new values"
    )
  for key, (old, new) in changes.items():
    logging.warning("config change on resume: %s %r -> %r", key, old, new)


def check_logdir(path: str) -> None:
  """Creates the run folder, or refuses one that is a file or not writable (cli.UserError)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise cli.UserError(f"--logdir: {path} is a file, not a folder")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise cli.UserError(f"--logdir: cannot create {path} ({e.strerror or e})") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise cli.UserError(f"--logdir: {path} is not writable")


def is_chief_task() -> bool:
  """Whether TF_CONFIG (multi-worker training) makes this process the chief, or there is none.

  Every worker of a multi-worker run is started with the same --logdir; only
  the chief writes there (see training.distribution.is_chief), so only the chief locks it.
  """
  try:
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task") or {}
    task_type, index = task.get("type"), int(task.get("index", 0))
    cluster = tf_config.get("cluster") or {}
  except (ValueError, TypeError, AttributeError):
    return True  # TensorFlow reports a bad TF_CONFIG itself.
  if not task_type or task_type == "chief":
    return True
  return task_type == "worker" and index == 0 and "chief" not in cluster


def lock_logdir(layout: run_layout.RunLayout) -> dir_lock.DirLock:
  """Takes the run folder's lock, held until the process ends (cli.UserError if taken).

  A worker that is not the chief of a multi-worker run takes none (an unheld lock).
  """
  lock = dir_lock.DirLock(layout.lock)
  if not is_chief_task():
    return lock
  try:
    return lock.acquire()
  except dir_lock.LockBusyError as e:
    raise cli.UserError(
      f"--logdir {layout.root}: in use by another training run ({e.holder}); wait for it to "
      "finish or use another --logdir"
    ) from None
  except dir_lock.LockFileError as e:
    reason = run_layout.write_failure(e) or e.strerror
    raise cli.UserError(f"--logdir {layout.root}: cannot {e.action} ({reason})") from None


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  layout = run_layout.RunLayout(cli.resolve_path(FLAGS.logdir))
  try:
    config = experiment_from_flags()
  except (config_lib.ConfigError, FileNotFoundError) as e:
    raise cli.UserError(str(e)) from None
  if not config.data.is_synthetic and not config.data.train_file_pattern:
    raise cli.UserError(
      f"experiment {FLAGS.experiment} trains on TFRecords: give --train_file_pattern"
    )
  if not config.train.max_steps and not config.train.epochs:
    raise cli.UserError("set --max_steps or --epochs")
  check_logdir(layout.root)
  lock = lock_logdir(layout)
  try:
    check_resume(config, layout, FLAGS.allow_config_change)
    _train(config, layout, FLAGS.export_only)
  except Exception as e:  # A full or read-only disk: one line naming the run folder.
    reason = run_layout.write_failure(e)
    if reason is None or isinstance(e, cli.UserError):
      raise
    if isinstance(e, run_checkpoints.WriteError | versions.ExportError):
      raise cli.UserError(str(e)) from None
    raise cli.UserError(
      f"--logdir {layout.root}: cannot write ({reason}): {first_line(e)}"
    ) from None
  finally:
    lock.release()


def _train(
  config: config_lib.ExperimentConfig, layout: run_layout.RunLayout, export_only: bool
) -> None:
  """Builds the trainer, trains (unless `export_only`) and exports; see the module doc."""
  data = config.data
  if data.is_synthetic:
    train_pattern, validation_pattern, _ = synthetic.ensure_demo_data(
      layout.data,
      num_classes=data.synthetic_classes,
      views_per_class=data.synthetic_views,
      seed=config.train.seed,
    )
    data = data.replace(
      train_file_pattern=train_pattern,
      validation_file_pattern=validation_pattern,
      num_classes=data.synthetic_classes,
      synthetic_classes=0,
    )
  elif data.dataset_version == "synthetic" and not data.num_classes:
    raise cli.UserError("--dataset_version=synthetic needs --num_classes with your own files")
  try:
    trainer = trainer_lib.Trainer(config, layout, data=data)
  except (
    FileNotFoundError,
    input_pipeline.DataError,
    checkpoint_restore.CheckpointMismatchError,
    warm_start.InitFromError,
  ) as e:
    raise cli.UserError(str(e)) from None
  if export_only and trainer.restored_from is None:
    raise cli.UserError(f"--export_only: no checkpoint in {layout.checkpoints}")
  if not export_only:
    try:
      metrics = trainer.train()
    except trainer_lib.DivergedError as e:
      print(f"{cli.command_name()}: error: {' '.join(str(e).split())}", file=sys.stderr)
      sys.exit(EXIT_DIVERGED)
    except input_pipeline.DataError as e:
      raise cli.UserError(str(e)) from None
    logging.info(
      "final: %s", ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "interrupted")
    )
    if metrics.get("interrupted"):
      print(f"Stopped by SIGTERM; checkpoint: {trainer.manager.latest_checkpoint}", flush=True)
      sys.exit(EXIT_PREEMPTED)
  if config.train.export_at_end and trainer.is_chief:
    try:
      export_dir = versions.export_saved_model(
        trainer.model,
        config.model,
        layout.export,
        export_config=config.export,
        source=f"checkpoint {trainer.manager.latest_checkpoint}",
      )
    except (versions.ExportError, FileExistsError) as e:
      raise cli.UserError(str(e)) from None
    print(f"SavedModel: {export_dir}")
  print(f"Checkpoints: {layout.checkpoints}")


def run():
  """The `dolg-train` command (and `bazel run //dolg_tf:train`)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
