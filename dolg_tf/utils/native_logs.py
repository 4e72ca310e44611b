"""Native libraries' INFO lines on stderr, hidden unless --verbose.

ScaNN 1.4's C++ code logs through Abseil before anything called
absl::InitializeLog, so Abseil writes every message, INFO included, straight to
file descriptor 2, after a one-time line "WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR"; no environment variable
turns that off (TF_CPP_MIN_LOG_LEVEL is TensorFlow's own). `quiet_native_info`
sends descriptor 2 to a temporary file while such a call runs, then writes back
everything except those INFO lines and that preamble: warnings, errors and the
process's own (Python) log lines come through, after the call.
"""

import contextlib
import os
import re
import sys
import tempfile

import dolg_tf

# Abseil's C++ prefix: severity, date (0000 before InitializeLog), time, thread, file.cc:line].
_NATIVE_INFO = re.compile(r"^I\d{4} [\d:.]+\s+\d+ [\w./-]+\.(cc|cpp|h):\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def is_native_info(line: str) -> bool:
  """An INFO line of native code's Abseil logging, or Abseil's pre-initialisation preamble."""
  return line.startswith(_ABSL_PREAMBLE) or bool(_NATIVE_INFO.match(line))


@contextlib.contextmanager
def quiet_native_info():
  """While the block runs, native INFO lines on stderr are held back and dropped (not with
  --verbose); every other byte written to stderr is written out when the block ends."""
  if dolg_tf.VERBOSE:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      text = held.read().decode("utf-8", errors="replace")
      kept = [line for line in text.splitlines(keepends=True) if not is_native_info(line)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
