"""Shared test fixtures: the tiny DOLG / DELG configs, models and SavedModel exports.

Building and exporting even a tiny model costs seconds (Keras build, tf.function
tracing, SavedModel serialisation), so the fixtures below are computed once per
process (`functools.cache`) and shared by every test file that runs in it: all
of `pytest tests` or one Bazel py_test. They are read-only: a test must not
train, re-assign weights or write into them. A test that needs a modified model
or export builds its own.

Plain functions (not pytest fixtures), so files also run as `python tests/x_test.py`.
"""

import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf
from absl import logging as absl_logging

from dolg_tf import config as config_lib
from dolg_tf.export import versions
from dolg_tf.keras_api import keras
from dolg_tf.model import builder

# The one tiny DOLG network of the tests: 2 blocks per stage, 1/8 of the widths.
TINY_DOLG = config_lib.ModelConfig(
  backbone_depth=26, backbone_width_multiplier=0.125, local_dim=32, embedding_dim=16
)
# The tiny DOLG trained by the training tests: a smaller local branch and the
# head scale a 16-d embedding learns with.
TINY_TRAIN_DOLG = config_lib.ModelConfig(
  backbone_depth=26,
  backbone_width_multiplier=0.125,
  local_dim=16,
  embedding_dim=16,
  head_scale=4.0,
)
# The tiny DELG network (DELG defaults otherwise: DELF's layout, block3_strides, (x - 128) / 128).
TINY_DELG = config_lib.delg_config(
  backbone_depth=26,
  backbone_width_multiplier=0.125,
  embedding_dim=16,
  delg_reduced_dim=8,
  delg_attention_hidden=16,
)
# The tiny DELG trained by the training tests (the head scale a 16-d embedding learns with).
TINY_TRAIN_DELG = config_lib.delg_config(
  backbone_depth=26,
  backbone_width_multiplier=0.125,
  embedding_dim=16,
  delg_reduced_dim=8,
  delg_attention_hidden=8,
  head_scale=4.0,
)


def training_data(folder: str, views_per_class: int = 8, num_shards: int = 2):
  """(train pattern, validation pattern, classes) of 4 synthetic landmarks (48 px views).

  `folder` is a path, or a name under the process's test temp folder; each test
  file names its own (one pytest process runs them all, and a folder written
  with other settings would be rewritten under the first file's feet).
  """
  from dolg_tf.data import synthetic  # noqa: PLC0415 (only the training tests need it)

  if not os.path.isabs(folder):
    folder = os.path.join(tf.compat.v1.test.get_temp_dir(), folder)
  return synthetic.ensure_demo_data(
    folder, num_classes=4, views_per_class=views_per_class, image_size=48, num_shards=num_shards
  )


def training_experiment(model, train_pattern, num_classes, validation_pattern="", **train_values):
  """The ExperimentConfig of a training test: `model` on synthetic records at 32 px."""
  return config_lib.ExperimentConfig(
    model=model,
    data=config_lib.DataConfig(
      train_file_pattern=train_pattern,
      validation_file_pattern=validation_pattern,
      dataset_version="synthetic",
      num_classes=num_classes,
      image_size=32,
    ),
    train=config_lib.TrainConfig(**train_values),
  )


def run_module(module: str, *args: str, cwd=None, env=None, timeout=300):
  """`python -m <module> <args>` with text stdout/stderr captured (a CompletedProcess)."""
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    capture_output=True,
    text=True,
    cwd=cwd,
    env=env,
    timeout=timeout,
  )


def log_absl_info(test) -> None:
  """absl INFO lines reach `test`'s assertLogs, whatever verbosity earlier tests left."""
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  test.addCleanup(absl_logging.set_verbosity, previous)


def assert_one_line_error(test, command: str, result, pattern: str) -> None:
  """`result` exited 2 with one stderr line `<command>: error: <pattern>` and no traceback."""
  test.assertEqual(result.returncode, 2, result.stderr[-3000:])
  test.assertNotIn("Traceback", result.stderr)
  lines = result.stderr.strip().splitlines()
  test.assertLen(lines, 1, result.stderr)
  test.assertRegex(lines[0], f"^{command}: error: " + pattern)


# Models are built by a call on a zero batch of this size.
IMAGE_SIZE = 64
# Small serve_encoded settings (`tiny_export(name, export_config=SMALL_EXPORT_CONFIG)`):
# longest side at most 80 pixels, a 2-scale pyramid. Files that pass it share one export.
SMALL_EXPORT_CONFIG = config_lib.ExportConfig(max_image_size=80, image_scales=(0.5, 1.0))
# The seed set before each shared model is built (weights do not depend on test order).
_SEEDS = {"dolg": 1, "delg": 4}
# tiny_export's SavedModels: {(name, repr of the export arguments): export folder}.
_EXPORTS = {}


def signal_after_line(
  command: list[str], pattern: str, signum: int, timeout: float = 120
) -> tuple[int, str, str]:
  """Runs `command`, signals `signum` once a stderr line matches `pattern`; (status, out, err)."""
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    lines = []
    for line in process.stderr:
      lines.append(line)
      if re.search(pattern, line):
        break
    process.send_signal(signum)
    out, err = process.communicate(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return process.returncode, out, "".join(lines) + err


@functools.cache
def temp_root() -> str:
  """A process-wide temporary folder, removed when the process exits."""
  path = tempfile.mkdtemp(prefix="dolg_tf_testutil_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


def _config(name: str) -> config_lib.ModelConfig:
  if name == "dolg":
    return TINY_DOLG
  if name == "delg":
    return TINY_DELG
  raise ValueError(f"unknown tiny model {name!r}: 'dolg' or 'delg'")


def tiny_model(name: str = "dolg") -> keras.Model:
  """The shared tiny model ('dolg' or 'delg'), built at IMAGE_SIZE. Read-only."""
  return _tiny_model(name)


def tiny_export(name: str = "dolg", **export_kwargs) -> str:
  """The SavedModel folder (`<base>/1`) of `tiny_model(name)`, exported once. Read-only.

  Args:
    name: 'dolg' or 'delg'.
    **export_kwargs: passed to versions.export_saved_model (e.g. the export
      settings); none gives the library's defaults.

  Returns:
    The export folder; the same one for equal arguments within a process.
  """
  key = (name, repr(sorted(export_kwargs.items())))
  if key not in _EXPORTS:
    base = tempfile.mkdtemp(prefix=f"{name}_export_", dir=temp_root())
    _EXPORTS[key] = versions.export_saved_model(
      tiny_model(name), _config(name), base, **export_kwargs
    )
  return _EXPORTS[key]


def tiny_export_base(name: str = "dolg", **kwargs) -> str:
  """The TF Serving model base (parent folder) of `tiny_export(name, **kwargs)`."""
  return os.path.dirname(tiny_export(name, **kwargs))


def tiny_loaded(name: str = "dolg", **kwargs):
  """`tf.saved_model.load(tiny_export(name, **kwargs))`, loaded once. Read-only."""
  return _tiny_loaded(tiny_export(name, **kwargs))


@functools.cache
def _tiny_model(name):
  config = _config(name)
  keras.utils.set_random_seed(_SEEDS[name])
  return builder.build_model(config, image_size=IMAGE_SIZE)


@functools.cache
def _tiny_loaded(export_dir):
  return tf.saved_model.load(export_dir)
