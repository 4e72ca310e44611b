"""dolg_tf: DOLG and DELG for instance-level image retrieval in TensorFlow.

Importing the package before TensorFlow sets console defaults (this module
runs before any `dolg_tf.*` module imports TensorFlow): TF's C++ start-up lines
(CUDA factory registration "E" lines, "could not find cuda drivers", CPU feature
notes) are hidden with TF_CPP_MIN_LOG_LEVEL=3, and google.api_core's
Python-version FutureWarning is ignored; in a dolg_tf command, matplotlib's
warnings are too (a read-only HOME: it then caches in a temporary folder, as it
says at length). A TF_CPP_MIN_LOG_LEVEL already in the
environment, `--verbose` on a command line, or a process that imported
TensorFlow first keeps TensorFlow's own behaviour. Keras is never configured
here: dolg_tf takes its own Keras 2 (dolg_tf/keras_api.py).

In a dolg_tf command, Ctrl-C while its modules are still importing (before
`utils/cli.run` takes over) prints `<command>: interrupted` instead of a
traceback (an excepthook, installed only if none was set; other programs that
import dolg_tf keep Python's behaviour).
"""

import logging
import os
import sys
import warnings

VERBOSE = any(
  arg in ("--verbose", "--verbose=true", "--verbose=1", "--verbose=True") for arg in sys.argv[1:]
)
if not VERBOSE:
  if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.(api_core|auth)")


def _is_dolg_command() -> bool:
  """Whether this process runs a dolg_tf command (console script, `-m dolg_tf...`, Bazel)."""
  program = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  package = os.path.dirname(os.path.abspath(__file__))
  repository = os.path.dirname(package)
  thin_entry_points = (
    repository,
    os.path.join(repository, "export"),
    os.path.join(repository, "tools"),
  )
  # While `python -m dolg_tf.x` imports this package, sys.argv[0] is still "-m".
  original = getattr(sys, "orig_argv", [])
  run_as_module = any(
    flag == "-m" and module.split(".")[0] == "dolg_tf"
    for flag, module in zip(original, original[1:])
  )
  return (
    run_as_module
    or os.path.basename(program).startswith("dolg-")
    or program.startswith(package + os.sep)
    or (program.endswith(".py") and os.path.dirname(program) in thin_entry_points)
  )


def _command_excepthook(kind, value, traceback):
  """Ctrl-C before a command's `cli.run` (while TensorFlow loads): one line, no traceback.

  Once `cli.run` runs, it handles Ctrl-C itself (exit 130 after clean-up);
  before, nothing needs cleaning. Python then exits as killed by SIGINT (130).
  """
  if issubclass(kind, KeyboardInterrupt) and _is_dolg_command():
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    if sys.argv[0] == "-m":  # interrupted while `python -m` imported the package
      original = sys.orig_argv
      name = original[original.index("-m") + 1].rsplit(".", 1)[-1]
    print(f"{name}: interrupted", file=sys.stderr, flush=True)
    return
  _previous_excepthook(kind, value, traceback)


if not VERBOSE and _is_dolg_command():
  logging.getLogger("matplotlib").setLevel(logging.ERROR)

_previous_excepthook = sys.excepthook
if sys.excepthook is sys.__excepthook__:
  sys.excepthook = _command_excepthook
