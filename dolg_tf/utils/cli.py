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
* `--help` (`-?`, `--helpshort`) prints the command's doc and its own flags
  and exits 0, also for console scripts (utils/command_help.py).
* Interruptions: Ctrl-C (SIGINT) and SIGTERM unwind the command (its `finally`
  blocks and context managers run: temporary files removed, locks released),
  then print one line `<command>: interrupted` or `<command>: terminated` and
  exit with status 130 (128 + SIGINT) or 143 (128 + SIGTERM), as a shell
  reports a process killed by that signal; no traceback. A command that
  installs its own SIGTERM handler (training: it saves a checkpoint) keeps it
  while it is installed. If threads still hold the process 5 s after the line,
  it exits anyway.
"""

import atexit
import dataclasses
import logging
import os
import signal
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable, Mapping

from absl import app, flags
from absl import logging as absl_logging

import dolg_tf
from dolg_tf.utils import command_help

EXIT_USER_ERROR = 2
# As a shell reports a process killed by the signal.
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
# Seconds a process may take to exit after the interruption line (threads that
# block in a read or a native call) before it exits without waiting for them.
EXIT_GRACE_SECONDS = 5.0

flags.DEFINE_bool("verbose", False, "Show TensorFlow's start-up lines, warnings and INFO logs.")


class UserError(Exception):
  """A bad flag, config field, input file or output location; the message names it."""


class Terminated(BaseException):  # noqa: N818 (like KeyboardInterrupt, not an error)
  """SIGTERM, raised in the main thread by `run`'s handler (a BaseException, as KeyboardInterrupt).

  It unwinds the command like Ctrl-C does: `except Exception` does not catch
  it, `finally` blocks run.
  """


_FLAG_DEFINERS = {
  bool: flags.DEFINE_bool,
  int: flags.DEFINE_integer,
  float: flags.DEFINE_float,
  str: flags.DEFINE_string,
  tuple: flags.DEFINE_list,
}


def _flag_kind(hint) -> type:
  """bool/int/float/str/tuple: the type a field flag parses (`X | None` -> X)."""
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(t for t in typing.get_args(hint) if t is not type(None))
  return typing.get_origin(hint) or hint


def _field_flags(config, prefix: str, skip: frozenset) -> list[tuple[str, str, type, object]]:
  """(flag name, field path, kind, default) for each field of the dataclass `config`."""
  hints = typing.get_type_hints(type(config))
  rows = []
  for field in dataclasses.fields(config):
    path = f"{prefix}{field.name}"
    if field.name in skip or path in skip:
      continue
    kind = _flag_kind(hints[field.name])
    if kind not in _FLAG_DEFINERS:
      raise TypeError(f"{path}: a field of type {hints[field.name]} cannot be a flag")
    rows.append((field.name, path, kind, getattr(config, field.name)))
  return rows


def _default_text(value) -> str:
  if isinstance(value, tuple | list):
    return ",".join(str(v) for v in value)
  return str(value).lower() if isinstance(value, bool) else repr(value)


def define_config_flags(
  config,
  sections: Iterable[str] | None = None,
  skip: Iterable[str] = (),
  flag_values: flags.FlagValues = flags.FLAGS,
  default_help: str | None = None,
  flag_prefix: str = "",
) -> dict[str, str]:
  """Defines one override flag per field of the dataclass `config`; returns flag -> field path.

  Each flag is named after its field and defaults to None, meaning "not
  given" (`given_overrides` collects the given ones); its type follows the
  field's type hint (bool, int, float, str; a tuple is a comma-separated
  list) and its help names the field and its value in `config`. Calling it
  again with the same fields is a no-op (a command's `define_flags` may run
  twice); a flag of the same name defined otherwise is an error.

  Args:
    config: a dataclass instance (a config section, or a tree of sections).
    sections: the names of `config`'s section fields whose fields become flags
      (paths "section.field"); None: `config`'s own fields (paths "field").
    skip: field names or paths that get no flag.
    flag_values: where to define them (a private FlagValues in tests).
    default_help: the help's default text instead of the field's value (e.g.
      "from --experiment" when presets change the defaults).
    flag_prefix: put before every flag name, for a section whose flags
      carry its name (e.g. "gv_": --gv_top_k for geometric_verification.top_k).

  Returns:
    {flag name: dotted field path}, e.g. {"precision": "export.precision"}.

  Raises:
    ValueError: two fields share a flag name, or a flag of that name exists
      with another meaning.
    TypeError: a field type that cannot be a flag.
  """
  skip = frozenset(skip)
  if sections is None:
    rows = _field_flags(config, "", skip)
  else:
    rows = [
      row for name in sections for row in _field_flags(getattr(config, name), f"{name}.", skip)
    ]
  mapping: dict[str, str] = {}
  for field_name, path, kind, default in rows:
    name = flag_prefix + field_name
    if name in mapping:
      raise ValueError(f"{path} and {mapping[name]} share the flag name --{name}")
    mapping[name] = path
    shown = default_help or f"{_default_text(default)} when not given"
    help_text = f"Overrides the config field {path} (default: {shown})."
    if name in flag_values:
      if flag_values[name].help != help_text or flag_values[name].default is not None:
        raise ValueError(f"--{name} (for {path}) is already defined with another meaning")
      continue
    _FLAG_DEFINERS[kind](name, None, help_text, flag_values=flag_values)
  return mapping


def given_overrides(
  mapping: Mapping[str, str], flag_values: flags.FlagValues = flags.FLAGS
) -> dict:
  """The flags of `mapping` (flag -> field path) that were given, as a nested dict of values.

  E.g. {"export": {"precision": "bfloat16"}} for `--precision=bfloat16` and
  mapping {"precision": "export.precision"}; flags left at None are absent.
  """
  values: dict = {}
  for name, path in mapping.items():
    value = flag_values[name].value
    if value is None:
      continue
    *parents, field = path.split(".")
    node = values
    for part in parents:
      node = node.setdefault(part, {})
    node[field] = value
  return values


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


def _raise_terminated(signum, frame) -> None:
  """The SIGTERM handler of `run`: the first SIGTERM unwinds, later ones (during cleanup) wait."""
  del frame
  signal.signal(signum, lambda *_: None)
  raise Terminated()


def _install_sigterm_handler():
  """SIGTERM raises Terminated in the main thread; returns the previous handler (None: unchanged).

  A handler somebody already installed (an embedding program) is left alone.
  """
  if threading.current_thread() is not threading.main_thread():
    return None
  if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
    return None
  signal.signal(signal.SIGTERM, _raise_terminated)
  return signal.SIG_DFL


def exit_interrupted(word: str, status: int) -> None:
  """Prints `<command>: <word>` and exits with `status`, at the latest EXIT_GRACE_SECONDS later.

  Called once the command has unwound (its cleanup done). Non-daemon threads
  still blocked (a read of a pipe, a native call) would keep the process
  alive: a daemon timer ends it after the grace period.
  """
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
  print(f"{command_name()}: {word}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  if "-m" in getattr(sys, "orig_argv", [])[1:]:
    # Under `python -m`, CPython exits by SIGINT (status -2) whatever sys.exit says
    # when the KeyboardInterrupt was raised inside code run through PyRun_String
    # (pybind11 / TensorFlow imports do that): end here, after the atexit handlers.
    atexit._run_exitfuncs()  # pylint: disable=protected-access
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  timer = threading.Timer(EXIT_GRACE_SECONDS, os._exit, [status])  # pylint: disable=protected-access
  timer.daemon = True
  timer.start()
  sys.exit(status)


def run(
  main: Callable[[list[str]], int | None],
  flags_parser: Callable[[list[str]], list[str]] = _parse_flags,
) -> None:
  """Runs `main` as an absl app; a UserError or a bad flag becomes one line and exit status 2.

  Ctrl-C exits 130 and SIGTERM 143 after the command's cleanup, with one line
  (module doc). `--help` prints the doc of `main`'s module and the command's
  flags and exits 0 (utils/command_help.py). `flags_parser` returns the argv
  `main` gets (beam_cli's keeps Beam's options).
  """

  def guarded(argv):
    if os.environ.get("BUILD_WORKING_DIRECTORY"):
      os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])
    quiet_loggers()
    try:
      return main(argv)
    except (UserError, app.UsageError) as e:
      fail(str(e))

  command_help.exit_if_help_asked(sys.modules.get(main.__module__))
  previous = _install_sigterm_handler()
  try:
    app.run(guarded, flags_parser=flags_parser)
  except KeyboardInterrupt:
    exit_interrupted("interrupted", EXIT_INTERRUPTED)
  except Terminated:
    exit_interrupted("terminated", EXIT_TERMINATED)
  finally:
    if previous is not None and signal.getsignal(signal.SIGTERM) is _raise_terminated:
      signal.signal(signal.SIGTERM, previous)
