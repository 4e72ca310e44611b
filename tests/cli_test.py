"""Tests for dolg_tf.utils.cli: one-line errors, bazel working directory, quiet console."""

import logging
import os
import subprocess
import sys
import textwrap

import tensorflow as tf

from dolg_tf.utils import cli

_PROGRAM = textwrap.dedent(
  """
  import os, sys
  from absl import flags, logging
  from dolg_tf.utils import cli

  flags.DEFINE_integer("count", 1, "A number.")

  def main(argv):
    logging.info("cwd %s", os.getcwd())
    if flags.FLAGS.count < 0:
      raise cli.UserError("--count: must be >= 0, got %d" % flags.FLAGS.count)
    print("ok", cli.resolve_path("x.txt"))

  cli.run(main)
  """
)


class CliTest(tf.test.TestCase):
  def _run(self, *args, env=None):
    path = os.path.join(self.create_tempdir().full_path, "prog.py")
    with open(path, "w") as f:
      f.write(_PROGRAM)
    return subprocess.run(
      [sys.executable, path, *args],
      capture_output=True,
      text=True,
      env=dict(os.environ, **(env or {})),
      cwd=self.create_tempdir().full_path,
      timeout=120,
    )

  def test_user_error_is_one_line_and_exit_2(self):
    result = self._run("--count=-1")
    self.assertEqual(result.returncode, 2)
    self.assertEqual(
      result.stderr.strip().splitlines()[-1], "prog: error: --count: must be >= 0, got -1"
    )
    self.assertNotIn("Traceback", result.stderr)

  def test_bad_flag_is_one_line_and_exit_2(self):
    result = self._run("--count=abc")
    self.assertEqual(result.returncode, 2)
    lines = result.stderr.strip().splitlines()
    self.assertLen(lines, 1)
    self.assertRegex(lines[0], r"^prog: error: .*count")

  def test_runs_in_the_bazel_callers_folder(self):
    caller = self.create_tempdir().full_path
    result = self._run(env={"BUILD_WORKING_DIRECTORY": caller})
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stdout.strip(), f"ok {os.path.join(caller, 'x.txt')}")

  def test_resolve_path_keeps_urls_and_empty_values(self):
    self.assertEqual(cli.resolve_path(""), "")
    self.assertIsNone(cli.resolve_path(None))
    self.assertEqual(cli.resolve_path("gs://bucket/x"), "gs://bucket/x")
    self.assertEqual(cli.resolve_path("/abs/x"), "/abs/x")

  def test_library_noise_filter_drops_tensorflow_info_but_not_errors(self):
    noise = cli._LibraryNoiseFilter()

    def record(path, level):
      return logging.LogRecord("absl", level, path, 1, "message", (), None)

    tf_module = os.path.join(os.path.dirname(tf.__file__), "python", "saved_model", "save.py")
    self.assertFalse(noise.filter(record(tf_module, logging.INFO)))
    self.assertFalse(noise.filter(record(tf_module, logging.WARNING)))
    self.assertTrue(noise.filter(record(tf_module, logging.ERROR)))
    self.assertTrue(noise.filter(record(cli.__file__, logging.INFO)))


if __name__ == "__main__":
  tf.test.main()
