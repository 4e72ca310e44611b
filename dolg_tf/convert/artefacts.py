"""The one writer of a converted model's artefacts (official DOLG and DELF converters).

`<output_dir>/config.json` (model + export sections), `checkpoints/ckpt-1*`
(tf.train.Checkpoint with `model` and, if imported, `head`) and `export/1/`
(SavedModel), all written into a temporary sibling folder renamed at the end,
so a failed conversion leaves nothing behind. A full or read-only disk is one
OSError naming the output folder (the converters print it as one line).
"""

import os
import shutil
from collections.abc import Callable

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf import run_layout
from dolg_tf.export import versions


def check_output_dir(output_dir: str) -> str:
  """The absolute `output_dir`, which must be new or an empty folder.

  Raises:
    FileExistsError: naming it, if it is a file or a non-empty folder.
  """
  output_dir = os.path.abspath(output_dir)
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    raise FileExistsError(f"output directory is not empty: {output_dir}")
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise FileExistsError(f"output path exists and is not a directory: {output_dir}")
  return output_dir


def write_artefacts(
  converted,
  output_dir: str,
  export_config: config_lib.ExportConfig,
  write_extra: Callable[[str, str], dict[str, str]] | None = None,
  source: str | None = None,
) -> dict[str, str]:
  """Writes a converted model's config, checkpoint and export atomically.

  Args:
    converted: has `model`, `config` (ModelConfig) and `head` (or None).
    output_dir: checked with `check_output_dir`.
    export_config: the export's pyramid and size limits.
    write_extra: called as write_extra(tmp_dir, final_export_path) before the
      rename, to add files; returns {name: path under tmp_dir} to report.
    source: the converted checkpoint, named if its model is degenerate
      (versions.check_probe_descriptor).

  Returns:
    Paths: 'model_config', 'checkpoint' (prefix), 'export', and write_extra's.

  Raises:
    FileExistsError: `output_dir` is a file or a non-empty folder.
    OSError: naming `output_dir`, if the disk is full or read-only (nothing is
      left behind).
  """
  output_dir = check_output_dir(output_dir)
  tmp_dir = f"{output_dir}.tmp-{os.getpid()}"
  try:
    return _write(converted, output_dir, tmp_dir, export_config, write_extra, source)
  except BaseException as e:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    reason = run_layout.write_failure(e) if isinstance(e, Exception) else None
    if reason is None:
      raise
    raise OSError(
      f"{output_dir}: cannot write the converted model ({reason}); nothing was written"
    ) from e


def _write(converted, output_dir, tmp_dir, export_config, write_extra, source):
  """write_artefacts' work: everything into `tmp_dir`, renamed to `output_dir`."""
  if os.path.exists(tmp_dir):
    shutil.rmtree(tmp_dir)
  os.makedirs(tmp_dir)
  final = lambda path: os.path.join(output_dir, os.path.relpath(path, tmp_dir))
  try:
    layout = run_layout.RunLayout(tmp_dir)
    config_lib.save_config(
      {"model": converted.config.as_dict(), "export": export_config.as_dict()}, layout.config
    )
    objects = dict(model=converted.model)
    if converted.head is not None:
      objects["head"] = converted.head
    manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(**objects), layout.checkpoints, max_to_keep=1
    )
    checkpoint_prefix = manager.save(checkpoint_number=1)
    export_dir = versions.export_saved_model(
      converted.model,
      converted.config,
      layout.export,
      version=1,
      export_config=export_config,
      source=source,
    )
    extra = write_extra(tmp_dir, final(export_dir)) if write_extra else {}
    if os.path.isdir(output_dir):
      os.rmdir(output_dir)  # empty (checked above)
    os.replace(tmp_dir, output_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  paths = {
    "model_config": os.path.join(output_dir, config_lib.CONFIG_FILENAME),
    "checkpoint": final(checkpoint_prefix),
    "export": final(export_dir),
  }
  paths.update({name: final(path) for name, path in extra.items()})
  return paths
