"""pytest set-up: lets absl-based tests (tf.test.TestCase) run without tf.test.main()."""

from absl import flags


def pytest_configure(config):
  del config  # unused
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
