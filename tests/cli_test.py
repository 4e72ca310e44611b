"""Tests for dolg_tf.utils.cli: one-line errors, bazel working directory, quiet console."""

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap

import tensorflow as tf
from absl import flags

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

  def test_ctrl_c_inside_pyrun_string_code_exits_130_under_python_m(self):
    # CPython marks a KeyboardInterrupt raised in code run by PyRun_String (as
    # pybind11 and TensorFlow imports run code) as unhandled even once caught:
    # `python -m` then exited by SIGINT (-2) instead of cli's 130.
    folder = self.create_tempdir().full_path
    with open(os.path.join(folder, "pyrun_prog.py"), "w") as f:
      f.write(
        textwrap.dedent(
          """
          import ctypes
          from dolg_tf.utils import cli

          def main(argv):
            run = ctypes.pythonapi.PyRun_String
            run.restype = ctypes.py_object
            run.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
            run(b"raise KeyboardInterrupt", 257, {}, {})  # 257: Py_file_input

          cli.run(main)
          """
        )
      )
    result = subprocess.run(
      [sys.executable, "-m", "pyrun_prog"],
      capture_output=True,
      text=True,
      cwd=folder,
      env=dict(os.environ, PYTHONPATH=os.pathsep.join([folder, *sys.path])),
      timeout=120,
    )
    self.assertEqual(result.returncode, cli.EXIT_INTERRUPTED, result.stderr)
    self.assertEqual(result.stderr.strip().splitlines(), ["pyrun_prog: interrupted"])

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


@dataclasses.dataclass
class _Export:
  image_scales: tuple[float, ...] = (0.5, 1.0)
  max_image_size: int = 1024
  precision: str = "float32"
  fold_batch_norms: bool = True
  gem_power: float | None = None


@dataclasses.dataclass
class _Train:
  batch_size: int = 64
  seed: int = 0


@dataclasses.dataclass
class _Tree:
  train: _Train = dataclasses.field(default_factory=_Train)
  export: _Export = dataclasses.field(default_factory=_Export)


class ConfigFlagsTest(tf.test.TestCase):
  def test_one_flag_per_field_typed_by_its_hint_and_not_given_by_default(self):
    flag_values = flags.FlagValues()
    mapping = cli.define_config_flags(_Export(), flag_values=flag_values)
    self.assertEqual(
      mapping,
      {
        n: n
        for n in ("image_scales", "max_image_size", "precision", "fold_batch_norms", "gem_power")
      },
    )
    flag_values(["prog", "--max_image_size=512", "--image_scales=0.7,1", "--nofold_batch_norms"])
    self.assertEqual(flag_values["max_image_size"].value, 512)
    self.assertEqual(flag_values["image_scales"].value, ["0.7", "1"])
    self.assertIs(flag_values["fold_batch_norms"].value, False)
    self.assertIsNone(flag_values["precision"].value)
    self.assertEqual(
      cli.given_overrides(mapping, flag_values),
      {"max_image_size": 512, "image_scales": ["0.7", "1"], "fold_batch_norms": False},
    )
    flag_values(["prog", "--gem_power=2.5"])
    self.assertEqual(flag_values["gem_power"].value, 2.5)

  def test_help_names_the_field_and_the_configs_value(self):
    flag_values = flags.FlagValues()
    cli.define_config_flags(_Export(precision="bfloat16"), flag_values=flag_values)
    self.assertIn("precision", flag_values["precision"].help)
    self.assertIn("'bfloat16'", flag_values["precision"].help)
    self.assertIn("0.5,1.0", flag_values["image_scales"].help)
    cli.define_config_flags(
      _Train(), flag_values=flag_values, default_help="from --experiment", skip=("seed",)
    )
    self.assertIn("from --experiment", flag_values["batch_size"].help)
    self.assertNotIn("seed", flag_values)

  def test_sections_give_dotted_paths_and_nested_overrides(self):
    flag_values = flags.FlagValues()
    mapping = cli.define_config_flags(
      _Tree(), sections=("train", "export"), skip=("export.gem_power",), flag_values=flag_values
    )
    self.assertEqual(mapping["batch_size"], "train.batch_size")
    self.assertEqual(mapping["precision"], "export.precision")
    self.assertNotIn("gem_power", mapping)
    self.assertIn("export.precision", flag_values["precision"].help)
    flag_values(["prog", "--batch_size=8", "--precision=bfloat16"])
    self.assertEqual(
      cli.given_overrides(mapping, flag_values),
      {"train": {"batch_size": 8}, "export": {"precision": "bfloat16"}},
    )

  def test_a_second_call_is_a_no_op_and_a_clash_is_an_error(self):
    flag_values = flags.FlagValues()
    first = cli.define_config_flags(_Train(), flag_values=flag_values)
    self.assertEqual(cli.define_config_flags(_Train(), flag_values=flag_values), first)
    with self.assertRaisesRegex(ValueError, "--batch_size .*another meaning"):
      cli.define_config_flags(_Tree(), sections=("train",), flag_values=flag_values)

  def test_two_fields_with_one_name_are_refused(self):
    @dataclasses.dataclass
    class _Clash:
      train: _Train = dataclasses.field(default_factory=_Train)
      other: _Train = dataclasses.field(default_factory=_Train)

    with self.assertRaisesRegex(ValueError, "other.batch_size and train.batch_size"):
      cli.define_config_flags(_Clash(), sections=("train", "other"), flag_values=flags.FlagValues())


if __name__ == "__main__":
  tf.test.main()
