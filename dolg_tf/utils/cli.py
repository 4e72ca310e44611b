"""What every dolg_tf command shares: its console, its paths and its one-line errors.

    def main(argv): ...
    def run(): cli.run(main)            # console entry point (pyproject) and __main__

* `run` starts absl's app with TensorFlow's Python loggers at ERROR (TF's C++
  lines are hidden by the package import, see dolg_tf/__init__.py) unless
  `--verbose` is given, and turns a `UserError` (or a bad flag) into one line
  `<command>: error: <message>` on stderr and exit status 2, without a traceback.
* Under `bazel run` the binary starts in its runfiles tree; `run` moves to the
  caller's folder ($BUILD_WORKING_DIRECTORY) first, so relative paths on the
  command line and in configs mean what they mean without Bazel.
  `resolve_path` makes such a path absolute (for files handed to subprocesses).
"""

import logging
import os
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

import dolg_tf

EXIT_USER_ERROR = 2

flags.DEFINE_bool("verbose", False, "Show TensorFlow's start-up lines, warnings and INFO logs.")


class UserError(Exception):
  """A bad flag, config field, input file or output location; the message names it."""


def define_override(define: Callable[..., object], name: str, help_text: str) -> None:
  """Defines `--name` with default None (meaning "not given") unless a command already did.

  The training command and the extraction commands both take `--batch_size`
  (each its own process); a process that imports both (the tests) shares the flag.

  Args:
    define: flags.DEFINE_integer, flags.DEFINE_string, ...
    name: the flag.
    help_text: its help.
  """
  if name in flags.FLAGS:
    if flags.FLAGS[name].default is not None:
      raise ValueError(f"--{name} is defined twice and one has a default")
    return
  define(name, None, help_text)


def resolve_path(path: str | None) -> str | None:
  """`path` made absolute (after `~`); empty values and URLs are returned unchanged."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def command_name() -> str:
  return os.path.splitext(os.path.basename(sys.argv[0] or "dolg_tf"))[0]


def error_message(error: Exception) -> str:
  """The message of an error; a plain KeyError's without the quotes str() adds."""
  if type(error) is KeyError and error.args:
    return str(error.args[0])
  return str(error)


def fail(message: str) -> None:
  """Prints `<command>: error: <message>` and exits with status 2."""
  print(f"{command_name()}: error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


class _LibraryNoiseFilter(logging.Filter):
  """Drops INFO/WARNING records logged through absl by TensorFlow's own modules.

  TF's SavedModel code logs with absl directly (e.g. one line of several
  thousand characters listing a signature's renamed inputs per export), so a
  logger level cannot reach it; its errors still pass.
  """

  PACKAGES = tuple(f"{os.sep}{p}{os.sep}" for p in ("tensorflow", "keras", "tf_keras", "official"))

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    return not any(p in record.pathname for p in self.PACKAGES)


def quiet_loggers() -> None:
  """TensorFlow's and Keras' Python log lines below ERROR hidden unless --verbose."""
  if dolg_tf.VERBOSE:
    return
  absl_handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _LibraryNoiseFilter) for f in absl_handler.filters):
    absl_handler.addFilter(_LibraryNoiseFilter())
  for name in ("tensorflow", "keras", "tf_keras", "h5py"):
    logging.getLogger(name).setLevel(logging.ERROR)
  tf = sys.modules.get("tensorflow")
  if tf is not None:
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def run(
  main: Callable[[list[str]], int | None],
  flags_parser: Callable[[list[str]], list[str]] = _parse_flags,
) -> None:
  """Runs `main` as an absl app; a UserError or a bad flag becomes one line and exit status 2.

  `flags_parser` returns the argv `main` gets (beam_cli's keeps Beam's options).
  """

  def guarded(argv):
    if os.environ.get("BUILD_WORKING_DIRECTORY"):
      os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])
    quiet_loggers()
    try:
      return main(argv)
    except (UserError, app.UsageError) as e:
      fail(str(e))

  app.run(guarded, flags_parser=flags_parser)
