"""The console: every command's `--help` and the entry points' quiet start-up.

* `--help` of each console script (pyproject.toml [project.scripts], the
  venv's bin/ scripts that `pip install -e .` writes) prints that command's
  own flags on stdout and exits 0 (utils/command_help.py).
* No entry point prints TensorFlow's C++ start-up lines or a FutureWarning
  (dolg_tf/__init__.py): stderr stays empty for the console scripts, the thin
  entry points (`python extract_features.py`), a binary run as a file inside
  the package (as `bazel run` starts it) and a program that runs a TF op.

The subprocesses start without TF_CPP_MIN_LOG_LEVEL (Bazel's test environment
sets it) so that the package's own default is what is tested.
"""

import concurrent.futures
import os
import subprocess
import sys
import tempfile
import tomllib

import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The venv's console scripts lie next to its interpreter.
SCRIPTS_DIR = os.path.dirname(sys.executable)

# One flag each console script defines (its --help must show it).
SCRIPT_FLAGS = {
  "dolg-train": "experiment",
  "dolg-demo": "workdir",
  "dolg-export": "export_base",
  "dolg-serving-client": "server",
  "dolg-extract": "config",
  "dolg-extract-beam": "config",
  "dolg-retrieve": "dataset_file_path",
  "dolg-convert": "output_dir",
  "dolg-convert-delf": "output_dir",
  "dolg-build-dataset": "output_directory",
  "dolg-build-dataset-beam": "output_directory",
  "dolg-synthetic": "num_classes",
  "dolg-visualize": "report_dir",
  "dolg-recognize": "database_descriptors",
  "dolg-train-codebook": "codebook_size",
  "dolg-aggregate": "aggregation_config",
  "dolg-learn-whitening": "descriptors",
}
# Entry points that are not console scripts: (argv after the interpreter, a flag of theirs).
# A binary's file run as a program is how `bazel run //dolg_tf:<binary>` starts
# it (its own imports come first: one that imported TensorFlow before dolg_tf
# would print TF's start-up lines).
OTHER_ENTRY_POINTS = (
  (("extract_features.py",), "config"),
  (("export/export_model.py",), "export_base"),
  (("export/serving_client.py",), "server"),
  (("-m", "dolg_tf.demo"), "workdir"),
  (("dolg_tf/train.py",), "experiment"),
  (("dolg_tf/demo.py",), "workdir"),
  (("dolg_tf/retrieval/perform_retrieval.py",), "dataset_file_path"),
  (("dolg_tf/data/build_image_dataset.py",), "output_directory"),
  (("dolg_tf/data/beam_build_dataset.py",), "output_directory"),
  (("dolg_tf/data/synthetic.py",), "num_classes"),
  (("dolg_tf/extraction/beam_extract.py",), "config"),
  (("dolg_tf/convert/convert_official_dolg.py",), "output_dir"),
  (("dolg_tf/convert/convert_delf_checkpoint.py",), "output_dir"),
  (("dolg_tf/retrieval/recognize.py",), "database_descriptors"),
  (("dolg_tf/retrieval/train_codebook.py",), "codebook_size"),
  (("dolg_tf/retrieval/aggregate.py",), "aggregation_config"),
  (("dolg_tf/retrieval/learn_whitening.py",), "descriptors"),
)
# Subprocesses at once: each mostly imports TensorFlow (2-5 s of one core).
PARALLEL = 4


def _quiet_env() -> dict[str, str]:
  """This environment without the settings that would hide what the test looks for."""
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
  env["PYTHONPATH"] = REPO_ROOT
  # Bazel's sandbox keeps HOME read-only: matplotlib would say so on stderr.
  env.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "console_help_matplotlib"))
  return env


def _run(argv: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run(
    argv, capture_output=True, text=True, cwd=REPO_ROOT, env=_quiet_env(), timeout=300
  )


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
  with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
    return list(pool.map(_run, commands))


class ConsoleHelpTest(tf.test.TestCase):
  def _assert_help(self, result, flag: str):
    self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
    self.assertIn("\nflags:\n", result.stdout)
    self.assertIn(f"  --{flag}:", result.stdout)
    self.assertIn("--[no]verbose:", result.stdout)
    self.assertEqual(result.stderr, "")

  def test_the_table_covers_every_console_script(self):
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
      scripts = tomllib.load(f)["project"]["scripts"]
    self.assertCountEqual(scripts, SCRIPT_FLAGS)

  def test_every_console_script_prints_its_flags_and_exits_0(self):
    names = sorted(SCRIPT_FLAGS)
    for name in names:
      self.assertTrue(
        os.path.exists(os.path.join(SCRIPTS_DIR, name)),
        f"{name} not in {SCRIPTS_DIR}: run `pip install -e .` (tools/setup.sh)",
      )
    results = _run_all([[os.path.join(SCRIPTS_DIR, name), "--help"] for name in names])
    for name, result in zip(names, results, strict=True):
      with self.subTest(name):
        self._assert_help(result, SCRIPT_FLAGS[name])
        # The command's own doc, not a bare usage line of the wrapper script.
        self.assertNotIn("USAGE:", result.stdout)
        self.assertNotIn("Try --helpfull", result.stdout)

  def test_other_entry_points_print_their_flags_quietly(self):
    results = _run_all([[sys.executable, *argv, "--help"] for argv, _ in OTHER_ENTRY_POINTS])
    for (argv, flag), result in zip(OTHER_ENTRY_POINTS, results, strict=True):
      with self.subTest(" ".join(argv)):
        self._assert_help(result, flag)

  def test_help_spellings(self):
    demo = os.path.join(SCRIPTS_DIR, "dolg-synthetic")
    short, full, declined = _run_all(
      [[demo, "-?"], [demo, "--helpfull"], [demo, "--nohelp", "--output_dir="]]
    )
    self._assert_help(short, "num_classes")
    self._assert_help(full, "num_classes")
    # --helpfull adds absl's own flags.
    self.assertIn("--flagfile:", full.stdout)
    self.assertNotIn("--flagfile:", short.stdout)
    # --nohelp runs the command (which refuses the empty --output_dir).
    self.assertEqual(declined.returncode, 2, declined.stderr)
    self.assertNotIn("flags:", declined.stdout)

  def test_a_program_that_runs_a_tf_op_after_importing_dolg_tf_is_quiet(self):
    code = "import dolg_tf, tensorflow as tf; print(float(tf.reduce_sum(tf.ones([3]))))"
    result = _run([sys.executable, "-c", code])
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stdout, "3.0\n")
    self.assertEqual(result.stderr, "")


if __name__ == "__main__":
  tf.test.main()
