"""Version folders of TF Serving's layout: `<export_base>/<version>/`, written atomically.

`export_saved_model` writes a model's SavedModel (dolg_tf.export.serving_graph)
and its `assets.extra/config.json` (the model and export configs, which
extraction takes its defaults from) as the next version of an export base;
`export_from_checkpoint` does so for a training run's checkpoint
(dolg_tf.model.checkpoint_restore).

A version is written as `<export_base>/.tmp-<version>-<pid>` and renamed; a
failed export removes its folder, and one killed (SIGKILL, power loss) leaves
it behind hidden from TF Serving: the next export on the machine removes every
such folder whose process is gone (`remove_stale_exports`). One export at a
time per `<export_base>`: a second is refused naming the first's pid and host
(an fcntl.flock on `<export_base>/.dolg_export.lock`, dolg_tf.utils.dir_lock).
A full or read-only disk, a negative version, or a model whose descriptor of a
fixed test image is all zero or not finite (`check_probe_descriptor`) is an
ExportError naming the folder or the checkpoint, and leaves no version behind.
"""

import contextlib
import dataclasses
import errno
import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

from dolg_tf import config as config_lib
from dolg_tf import run_layout
from dolg_tf.export import serving_graph
from dolg_tf.io import export_section, savedmodel_contract
from dolg_tf.model import checkpoint_restore
from dolg_tf.utils import cpu, dir_lock

# The lock file of an export base (dolg_tf.utils.dir_lock); TF Serving ignores files.
EXPORT_LOCK_FILE = ".dolg_export.lock"
# The side of the fixed test image whose descriptor every export checks.
PROBE_IMAGE_SIZE = 64


class ExportError(ValueError):
  """An export that cannot be written or would be useless; the message names the folder."""


_TMP_EXPORT = re.compile(r"^\.tmp-(\d+)-(\d+)$")


def _process_exists(pid: int) -> bool:
  """Whether a process with this id runs on this machine (signal 0 probes it)."""
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM  # It exists, as another user's process.
  return True


def temp_export_dir(export_base: str, version: int, pid: int | None = None) -> str:
  """The hidden folder a version is written to before its rename: `.tmp-<version>-<pid>`."""
  return os.path.join(export_base, f".tmp-{version}-{os.getpid() if pid is None else pid}")


def remove_stale_exports(export_base: str) -> list[str]:
  """Removes `.tmp-<version>-<pid>` folders of exports whose process is gone.

  Folders of running processes (another export in progress) are kept. The
  PID is checked on this machine only: on a shared file system, export from
  one machine at a time.

  Returns:
    The removed folders.
  """
  if not tf.io.gfile.isdir(export_base):
    return []
  removed = []
  for name in tf.io.gfile.listdir(export_base):
    found = _TMP_EXPORT.match(name.rstrip("/"))
    if not found or _process_exists(int(found.group(2))):
      continue
    path = os.path.join(export_base, name.rstrip("/"))
    try:
      tf.io.gfile.rmtree(path)
    except tf.errors.NotFoundError:
      continue  # Removed by a concurrent export.
    logging.info("removed %s, left by an export that did not finish", path)
    removed.append(path)
  return removed


def next_version(export_base: str) -> int:
  """1 + the largest numeric version folder under `export_base` (1 if none)."""
  if not tf.io.gfile.isdir(export_base):
    return 1
  versions = [int(d) for d in tf.io.gfile.listdir(export_base) if d.strip("/").isdigit()]
  return max(versions, default=0) + 1


def probe_image() -> np.ndarray:
  """The fixed uint8 [64, 64, 3] test image of `check_probe_descriptor` (stripes and a ramp)."""
  y, x = np.mgrid[0:PROBE_IMAGE_SIZE, 0:PROBE_IMAGE_SIZE]
  channels = [(x * 4) % 256, (y * 4) % 256, ((x + 2 * y) * 8) % 256]
  return np.stack(channels, axis=-1).astype(np.uint8)


def probe_problem(descriptor) -> str | None:
  """Why a served (L2-normalised) global descriptor is degenerate, or None if it is not."""
  values = np.asarray(descriptor, np.float32).ravel()
  bad = int(np.count_nonzero(~np.isfinite(values)))
  if bad:
    return f"{bad} of its {values.size} values are NaN or inf"
  if not values.any():
    return f"all {values.size} values are zero"
  norm = float(np.linalg.norm(values))
  if norm < 0.5:
    return f"its L2 norm is {norm:.3g}, not 1: the features before normalisation are ~0"
  return None


def check_probe_descriptor(module, source: str) -> None:
  """Refuses a serving module whose descriptor of `probe_image()` is degenerate.

  A checkpoint whose weights are NaN, or make every feature zero, would
  otherwise export and give the same useless descriptor for every image.

  Raises:
    ExportError: naming `source` and what is wrong.
  """
  outputs = module.serve(tf.constant(probe_image()), tf.constant([1.0]), tf.constant([0], tf.int32))
  problem = probe_problem(outputs[savedmodel_contract.GLOBAL_DESCRIPTOR].numpy())
  if problem is not None:
    raise ExportError(
      f"{source}: the model's global descriptor of a fixed {PROBE_IMAGE_SIZE}x"
      f"{PROBE_IMAGE_SIZE} test image is degenerate ({problem}); its weights are damaged or "
      "diverged: export another checkpoint"
    )


def _check_version(version) -> None:
  if version is None:
    return
  if isinstance(version, bool) or not isinstance(version, int | np.integer) or version < 0:
    raise ExportError(
      f"--version: {version!r} is not a non-negative integer (TF Serving loads only version "
      "folders named by one; 0 = the next free number)"
    )


def export_saved_model(
  model,
  model_config: config_lib.ModelConfig,
  export_base: str,
  version: int | None = None,
  export_config: export_section.ExportConfig | None = None,
  source: str | None = None,
) -> str:
  """Writes `<export_base>/<version>/` atomically and returns its path.

  The SavedModel is written to a temporary sibling folder and renamed, so TF
  Serving (which polls `export_base`) never sees a half-written version.
  `assets.extra/config.json` records the model and export sections
  (config.save_config), the defaults of extraction.

  Args:
    model: the built descriptor model.
    model_config: its config.
    export_base: TF Serving's model base folder.
    version: the version folder; default the next free number.
    export_config: everything the export serves and records (serving_graph);
      default ExportConfig().
    source: what the weights come from (a checkpoint), named by a refusal of
      a degenerate model; default "the model".

  Raises:
    FileExistsError: if that version already exists.
    ExportError: a negative version; another export holds `export_base`; the
      disk is full or read-only; the model's descriptor is degenerate
      (`check_probe_descriptor`). Nothing is left of the new version.
  """
  _check_version(version)
  export_config = export_config or export_section.ExportConfig()
  precision = cpu.resolve_auto(export_config.precision, "bfloat16")
  export_config = dataclasses.replace(export_config, precision=precision)

  def write(tmp_dir):
    module = serving_graph.serving_module(model, model_config, export_config)
    check_probe_descriptor(module, source or "the model")
    tf.saved_model.save(module, tmp_dir, signatures=module.signatures(), **_save_kwargs(model))
    config_lib.save_config(
      {
        "model": model_config.as_dict(),
        "export": export_config.as_dict(),
        savedmodel_contract.INTERFACE_KEY: savedmodel_contract.INTERFACE_VERSION,
      },
      os.path.join(tmp_dir, savedmodel_contract.CONFIG_ASSET),
    )

  return write_version(export_base, version, write)


def _save_kwargs(model) -> dict:
  """tf.saved_model.save's options for `model`: custom gradients not traced for keras.applications.

  A SavedModel only serves, so the gradient functions tf.saved_model.save
  traces by default (SaveOptions.experimental_custom_gradients) are never
  used. The keras.applications backbones (KerasAppBackbone: a `network`)
  have an op with a custom gradient per activation (EfficientNet's swish,
  tf.nn.silu): tracing those and matching their captures took 66 of the
  107 s of an EfficientNet-B0 export. ResNets have none, and keep the default.
  """
  if hasattr(getattr(model, "backbone", None), "network"):
    return {"options": tf.saved_model.SaveOptions(experimental_custom_gradients=False)}
  return {}


def write_version(export_base: str, version: int | None, write) -> str:
  """Runs `write(tmp_dir)` and renames its folder to `<export_base>/<version>`, under the lock.

  Args:
    export_base: TF Serving's model base folder (created if missing, and
      removed again if a failed first export leaves it empty).
    version: the version folder; None (or 0) = the next free number.
    write: fills the temporary folder (it does not exist yet).

  Returns:
    The version folder.

  Raises:
    FileExistsError: if that version already exists.
    ExportError: another export holds `export_base`; the disk is full or
      read-only. Nothing is left of the new version.
  """
  local = "://" not in export_base
  created = local and not os.path.isdir(export_base)
  lock = None
  try:
    try:
      tf.io.gfile.makedirs(export_base)
      if local:
        lock = dir_lock.DirLock(os.path.join(export_base, EXPORT_LOCK_FILE)).acquire()
    except dir_lock.LockBusyError as e:
      raise ExportError(
        f"{export_base}: another export is writing here ({e.holder}); wait for it to finish"
      ) from None
    return _write_locked(export_base, version, write)
  except (OSError, tf.errors.OpError) as e:
    reason = run_layout.write_failure(e)
    if reason is None:
      raise
    raise ExportError(
      f"{export_base}: cannot write the export ({reason}); no new version was left there"
    ) from e
  finally:
    if lock is not None:
      lock.release()
    if created:
      with contextlib.suppress(OSError):  # Left only if it is empty (a failed first export).
        os.rmdir(export_base)


def _write_locked(export_base: str, version: int | None, write) -> str:
  """write_version's work, with `export_base` locked."""
  remove_stale_exports(export_base)
  version = version or next_version(export_base)
  export_dir = os.path.join(export_base, str(version))
  if tf.io.gfile.exists(export_dir):
    raise FileExistsError(f"export version already exists: {export_dir}")
  tmp_dir = temp_export_dir(export_base, version)
  if tf.io.gfile.exists(tmp_dir):
    tf.io.gfile.rmtree(tmp_dir)
  try:
    write(tmp_dir)
    tf.io.gfile.rename(tmp_dir, export_dir)
  except BaseException:
    if tf.io.gfile.exists(tmp_dir):
      tf.io.gfile.rmtree(tmp_dir)
    raise
  return export_dir


def export_from_checkpoint(
  logdir: str,
  checkpoint: str = "",
  export_base: str = "",
  version: int | None = None,
  export_overrides=None,
) -> str:
  """Restores a training run's checkpoint and exports it.

  Args:
    logdir: the run folder (config.json and checkpoints/, see run_layout).
    checkpoint: a checkpoint prefix; default the latest of `logdir`.
    export_base: default `<logdir>/export`.
    version: as `export_saved_model`.
    export_overrides: dict or --params_override string applied to the run's
      config (e.g. {'export': {'max_image_size': 512}}).

  Raises:
    FileNotFoundError: no run folder, config or checkpoint (named).
    config_lib.ConfigError: a bad override.
    checkpoint_restore.CheckpointMismatchError: the checkpoint does not fit the
      run's model config (named).
  """
  experiment, model, checkpoint = checkpoint_restore.restore_run(
    logdir, checkpoint, export_overrides
  )
  return export_saved_model(
    model,
    experiment.model,
    export_base or run_layout.RunLayout(logdir).export,
    version,
    experiment.export,
    source=f"checkpoint {checkpoint}",
  )
