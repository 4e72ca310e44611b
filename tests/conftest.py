"""pytest set-up for tf.test.TestCase tests written for absl's runner."""

from absl import flags


def pytest_configure(config):
  del config  # unused
  # tf.test.TestCase reads absl flags (e.g. --test_tmpdir); tf.test.main() would parse them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(config, items):
  del config  # unused
  # tf.test.TestCase.test_session is a deprecated context manager that pytest
  # mistakes for a test and reports as skipped; drop it.
  items[:] = [item for item in items if item.name != "test_session"]
