"""What the Apache Beam commands share: absl flags plus Beam's pipeline options.

    def main(argv):
      options = beam_cli.pipeline_options(argv)   # --runner=..., --project=..., ...
      ...
    def run(): beam_cli.run(main)

The project's flags are absl flags; every other `--flag` of the command line is
handed to Beam (`PipelineOptions`), as in Beam's own examples. A flag that
neither absl nor any of Beam's option groups knows is a user error (one line,
exit status 2), never silently dropped as Beam itself would.

Local worker processes (`--direct_running_mode=multi_processing`) are started
by Beam as `python -m apache_beam.runners.worker.sdk_worker_main`; they inherit
the launcher's environment and import this module first (it is added to
`--beam_plugins`), so they:
  * hide the same library warnings and TensorFlow C++ lines as the launcher
    (PYTHONWARNINGS, TF_CPP_MIN_LOG_LEVEL; not with --verbose);
  * die with the launcher: a worker whose launcher is gone (kill -9 included)
    exits within a second (PR_SET_PDEATHSIG on Linux, plus a watchdog thread).
On Ctrl-C or SIGTERM the launcher stops its workers (`stop_workers`) before it
exits (130 / 143, cli.py).
"""

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from absl import flags
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options import pipeline_options as beam_options

import dolg_tf
from dolg_tf.utils import cli
from dolg_tf.utils import files as file_utils

DEFAULT_RUNNER = "DirectRunner"
# Set by the launcher (its pid) for the worker processes it starts.
LAUNCHER_ENV = "DOLG_TF_BEAM_LAUNCHER"
# The warnings dolg_tf/__init__.py hides, for worker processes (PYTHONWARNINGS
# entries match a module exactly): google-auth's and google-api-core's.
WORKER_WARNING_FILTERS = tuple(
  f"ignore::FutureWarning:{module}"
  for module in (
    "google.auth",
    "google.auth._default",
    "google.auth.transport.grpc",
    "google.api_core",
    "google.api_core._python_version_support",
  )
)
# How often a worker checks that its launcher is alive.
WATCHDOG_SECONDS = 0.5


def _known_beam_flags() -> set[str]:
  """Every option string (`--runner`, `--project`, ...) of Beam's option groups."""
  parser = beam_options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  for group in beam_options.PipelineOptions.__subclasses__() + [beam_options.PipelineOptions]:
    stack = [group]
    while stack:
      cls = stack.pop()
      stack.extend(cls.__subclasses__())
      try:
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
      except Exception:  # pylint: disable=broad-except  (an option defined twice)
        pass
  return {s for action in parser._actions for s in action.option_strings}  # pylint: disable=protected-access


def pipeline_options(argv: list[str], **overrides) -> beam_options.PipelineOptions:
  """Beam's PipelineOptions from the arguments absl left (argv[1:]), plus `overrides`.

  The runner defaults to the DirectRunner.

  Raises:
    cli.UserError: an argument no Beam option group knows, or a bare word.
  """
  args = list(argv[1:])
  known = _known_beam_flags()
  for arg in args:
    if not arg.startswith("--"):
      raise cli.UserError(f"unexpected argument {arg!r} (Beam options are --name=value)")
    name = arg.split("=", 1)[0]
    if name not in known:
      raise cli.UserError(f"unknown flag {name} (not this command's, nor a Beam pipeline option)")
  options = beam_options.PipelineOptions(args, **overrides)
  standard = options.view_as(beam_options.StandardOptions)
  if not standard.runner:
    standard.runner = DEFAULT_RUNNER
  setup = options.view_as(beam_options.SetupOptions)
  setup.beam_plugins = [p for p in setup.beam_plugins or [] if p != __name__] + [__name__]
  prepare_worker_environment()
  return options


def prepare_worker_environment() -> None:
  """Sets what local worker processes inherit: warning filters, log level, the launcher's pid."""
  os.environ[LAUNCHER_ENV] = str(os.getpid())
  if dolg_tf.VERBOSE:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  entries = [e for e in os.environ.get("PYTHONWARNINGS", "").split(",") if e]
  entries += [f for f in WORKER_WARNING_FILTERS if f not in entries]
  os.environ["PYTHONWARNINGS"] = ",".join(entries)


def _process_alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie, killed but not yet reaped, does not)."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      state = f.read().rsplit(b")", 1)[1].split()[0]
    return state not in (b"Z", b"X")
  except FileNotFoundError:
    if os.path.isdir("/proc/self"):
      return False
  except (OSError, IndexError):
    pass
  # No /proc (macOS): signal 0 probes the pid (a zombie counts as running).
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    pass
  return True


def _set_parent_death_signal() -> None:
  """Linux: SIGKILL this process when its parent ends (best effort elsewhere: a no-op)."""
  if not sys.platform.startswith("linux"):
    return
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


_watching = []


def watch_launcher() -> None:
  """In a worker process started by a launcher (LAUNCHER_ENV): exits as soon as it is gone."""
  value = os.environ.get(LAUNCHER_ENV, "")
  if _watching or not value.isdigit() or int(value) == os.getpid():
    return
  if not os.path.basename(sys.argv[0] if sys.argv else "").startswith("sdk_worker_main"):
    return  # Only Beam's worker processes, not every program the launcher starts.
  launcher, parent = int(value), os.getppid()
  _set_parent_death_signal()
  if os.getppid() != parent or not _process_alive(launcher):
    os._exit(1)  # pylint: disable=protected-access
  if threading.current_thread() is threading.main_thread():
    # A terminal's Ctrl-C reaches every process of the group: the launcher stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
  # The launcher's death closes the worker's connections before the watchdog
  # sees it: its threads' errors are then not printed.
  default_hook = threading.excepthook

  def quiet_if_orphaned(args):
    # A killed launcher closes its sockets before it is a zombie: wait a moment for that.
    for _ in range(20):
      if os.getppid() != parent or not _process_alive(launcher):
        os._exit(1)  # pylint: disable=protected-access
      time.sleep(0.05)
    default_hook(args)

  threading.excepthook = quiet_if_orphaned

  def watch():
    while True:
      time.sleep(WATCHDOG_SECONDS)
      if os.getppid() != parent or not _process_alive(launcher):
        os._exit(1)  # pylint: disable=protected-access

  _watching.append(threading.Thread(target=watch, name="dolg_tf-launcher-watch", daemon=True))
  _watching[0].start()


def _child_pids(pid: int) -> list[int]:
  """The children of `pid` (Linux /proc), [] if unknown."""
  children = []
  try:
    tasks = os.listdir(f"/proc/{pid}/task")
  except OSError:
    return children
  for task in tasks:
    try:
      with open(f"/proc/{pid}/task/{task}/children") as f:
        children += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      pass
  return children


@contextlib.contextmanager
def workers_stopped_on_interrupt():
  """While a pipeline runs: Ctrl-C or SIGTERM first ends the local workers, then unwinds.

  Beam's runner, unwinding, would wait for every worker to finish its bundle.
  In the main thread only (elsewhere a no-op).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  signals = (signal.SIGINT, signal.SIGTERM)
  previous = {sig: signal.getsignal(sig) for sig in signals}

  def on_signal(signum, frame):
    for sig in signals:
      signal.signal(sig, signal.SIG_IGN)  # no second signal while the workers are stopped
    stop_workers()
    for sig in signals:
      signal.signal(sig, previous[sig])
    handler = previous[signum]
    if callable(handler):
      handler(signum, frame)  # Python's KeyboardInterrupt, cli.run's Terminated
    if signum == signal.SIGINT:
      raise KeyboardInterrupt
    raise cli.Terminated()

  for sig in signals:
    signal.signal(sig, on_signal)
  try:
    yield
  finally:
    for sig in signals:
      if signal.getsignal(sig) is on_signal:
        signal.signal(sig, previous[sig])


# The worker processes stop_workers ended (their temporary files are garbage).
_stopped = set()


def stop_workers(timeout: float = 5.0) -> list[int]:
  """Ends this launcher's worker processes (its descendants): SIGTERM, then SIGKILL.

  Called when the launcher is interrupted: the runner's threads that watched
  the workers then end quietly. Returns the pids it signalled.
  """
  # The runner's threads see their workers die: their errors and log lines are not news.
  threading.excepthook = lambda args: None
  if not dolg_tf.VERBOSE:
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
  pending, found = [os.getpid()], []
  while pending:
    for child in _child_pids(pending.pop()):
      if child not in found:
        found.append(child)
        pending.append(child)
  for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in found:
      try:
        os.kill(pid, sig)
      except OSError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_process_alive(p) for p in found):
      time.sleep(0.05)
  _stopped.update(found)
  return found


def remove_worker_temp_files(folder: str) -> list[str]:
  """Removes the temporary files of stopped workers and of dead processes in `folder`.

  A worker just killed may still be a zombie (its pid exists): files.py's
  stale-file rule would keep its files.
  """
  removed = file_utils.remove_stale_temp_files(folder)
  try:
    entries = list(os.scandir(folder))
  except OSError:
    return removed
  for entry in entries:
    match = file_utils.TEMP_NAME_PATTERN.match(entry.name)
    if match and int(match.group("pid")) in _stopped:
      try:
        os.unlink(entry.path)
        removed.append(entry.path)
      except FileNotFoundError:
        pass
  return removed


def run_to_the_end(root, output_dir: str):
  """Runs the pipeline `root` and waits for it; returns its result.

  On Ctrl-C or SIGTERM its local workers are ended and their temporary files
  in `output_dir` removed before the interruption propagates (cli.run then
  exits 130 / 143).
  """
  try:
    with workers_stopped_on_interrupt():
      result = root.run()
      result.wait_until_finish()
  except (KeyboardInterrupt, cli.Terminated):
    stop_workers()
    remove_worker_temp_files(output_dir)
    raise
  return result


def _parse_known_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv, known_only=True)
  except flags.Error as e:
    cli.fail(str(e))


def run(main: Callable[[list[str]], int | None]) -> None:
  """cli.run for a Beam command: absl parses its flags, Beam gets the rest (`pipeline_options`).

  Beam's INFO lines (every worker's start-up and shutdown, relayed by the
  DirectRunner) are hidden unless --verbose.
  """
  if not dolg_tf.VERBOSE:
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
  cli.run(main, flags_parser=_parse_known_flags)


def counters(result, namespace: str, names) -> dict[str, int]:
  """A finished pipeline's counters of `namespace`, each of `names` present (0 if never set).

  Committed values are taken when the runner has them, attempted ones otherwise.
  """
  found = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
  values = dict.fromkeys(names, 0)
  for counter in found:
    value = counter.committed if counter.committed is not None else counter.attempted
    values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value or 0)
  return values


# A worker process imports this module at its start (--beam_plugins).
watch_launcher()
