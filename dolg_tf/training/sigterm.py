"""The training loop's SIGTERM, noted between steps: the run saves the current step and stops."""

import signal


def note_sigterm(interrupted: list):
  """Installs a SIGTERM handler that appends to `interrupted`; returns the previous one.

  None (nothing installed) outside the main thread.
  """
  previous_handler = signal.getsignal(signal.SIGTERM)

  def on_sigterm(signum, frame):
    del signum, frame
    interrupted.append(True)

  try:
    signal.signal(signal.SIGTERM, on_sigterm)
  except ValueError:  # not the main thread
    return None
  return previous_handler
