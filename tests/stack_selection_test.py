"""tools/stack.sh: which stack a machine gets, and one-line errors for bad requests."""

import os
import shutil
import subprocess

import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK_SH = os.path.join(REPO_ROOT, "tools", "stack.sh")


class StackSelectionTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    if not os.path.exists(STACK_SH):
      self.skipTest("needs the source tree (Bazel's runfiles hold no tools/)")

  def _machine(self, *pythons: str) -> str:
    """A PATH holding only the shell tools stack.sh uses and stand-ins for `pythons`."""
    folder = self.create_tempdir().full_path
    for tool in ("dirname", "ls", "sort", "sed", "cat"):
      os.symlink(shutil.which(tool), os.path.join(folder, tool))
    for python in pythons:
      path = os.path.join(folder, python)
      with open(path, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
      os.chmod(path, 0o755)
    return folder

  def _stack(self, path: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
      [shutil.which("bash"), STACK_SH, *args], capture_output=True, text=True, env=env, timeout=60
    )

  def _fields(self, result: subprocess.CompletedProcess) -> dict[str, str]:
    self.assertEqual(result.returncode, 0, result.stderr)
    return dict(line.split("=", 1) for line in result.stdout.splitlines())

  def test_only_python_3_13_gets_the_current_stack(self):
    path = self._machine("python3.13")
    fields = self._fields(self._stack(path))
    self.assertEqual(fields["name"], "current")
    self.assertEqual(fields["python"], os.path.join(path, "python3.13"))
    self.assertEqual(fields["lock"], "requirements-current.lock")
    self.assertEqual(fields["venv"], os.path.join(REPO_ROOT, ".venv-current"))
    self.assertIn("no python3.11", fields["why"])

  def test_newest_current_python_wins(self):
    path = self._machine("python3.12", "python3.13")
    self.assertEqual(self._fields(self._stack(path, "current"))["python"], f"{path}/python3.13")
    path = self._machine("python3.12")
    self.assertEqual(self._fields(self._stack(path, "current"))["python"], f"{path}/python3.12")

  def test_python_3_11_gets_the_card_stack(self):
    fields = self._fields(self._stack(self._machine("python3.11", "python3.13")))
    self.assertEqual(fields["name"], "card")
    self.assertEqual(fields["lock"], "requirements.lock")
    self.assertEqual(fields["requirements"], "requirements.txt")
    self.assertIn("setuptools==", fields["bootstrap"])

  def test_user_errors_are_one_line_and_exit_2(self):
    cases = {
      ("card",): ("python3.13",),  # no python3.11
      ("auto",): (),  # no supported Python at all
      ("newest",): ("python3.11",),
      ("card", "colour"): ("python3.11",),
    }
    for args, pythons in cases.items():
      with self.subTest(args=args):
        result = self._stack(self._machine(*pythons), *args)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.splitlines()
        self.assertLen(lines, 1)
        self.assertStartsWith(lines[0], "tools/stack.sh: error: ")


if __name__ == "__main__":
  tf.test.main()
