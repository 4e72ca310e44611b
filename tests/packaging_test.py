"""pyproject.toml: ranges that admit both stacks' lock files; exact pins only in the locks."""

import json
import os
import re
import subprocess
import sys
import tomllib

import tensorflow as tf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCKS = {
  "requirements.lock": {"python_version": "3.11", "python_full_version": "3.11.7"},
  "requirements-current.lock": {"python_version": "3.13", "python_full_version": "3.13.0"},
}


def _pyproject() -> dict:
  with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _lock(name: str) -> dict[str, str]:
  pins = {}
  with open(os.path.join(REPO_ROOT, name), encoding="utf-8") as f:
    for line in f:
      match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
      if match:
        pins[canonicalize_name(match.group(1))] = match.group(2)
  return pins


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
  project = _pyproject()["project"]
  requirements = [Requirement(r) for r in project["dependencies"]]
  for extra in extras:
    requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
  return requirements


class PackagingTest(tf.test.TestCase):
  def test_both_locks_satisfy_the_ranges(self):
    for lock, environment in LOCKS.items():
      pins = _lock(lock)
      for requirement in _requirements(("beam", "addons")):
        if requirement.marker and not requirement.marker.evaluate(environment):
          continue
        name = canonicalize_name(requirement.name)
        with self.subTest(lock=lock, requirement=str(requirement)):
          self.assertIn(name, pins, f"{lock} does not pin {name}")
          self.assertTrue(
            requirement.specifier.contains(pins[name], prereleases=True),
            f"{lock}: {name}=={pins[name]} is outside {requirement.specifier}",
          )

  def test_dependencies_are_ranges_not_pins(self):
    for requirement in _requirements(("addons", "beam", "dev", "torch")):
      operators = {spec.operator for spec in requirement.specifier}
      self.assertNotIn("==", operators, str(requirement))
      self.assertNotIn("===", operators, str(requirement))

  def test_addons_only_where_they_install(self):
    (addons,) = _requirements(("addons",))[-1:]
    self.assertEqual(canonicalize_name(addons.name), "tensorflow-addons")
    self.assertTrue(addons.marker.evaluate(LOCKS["requirements.lock"]))
    self.assertFalse(addons.marker.evaluate(LOCKS["requirements-current.lock"]))

  def test_python_range_covers_both_stacks(self):
    python = _pyproject()["project"]["requires-python"]
    for version in ("3.11.7", "3.12.1", "3.13.0"):
      self.assertTrue(Requirement(f"python{python}").specifier.contains(version), version)

  def test_pip_install_keeps_the_environment_s_tensorflow(self):
    # pip's own resolution against this venv (one of the two locks): it would add dolg_tf and
    # change nothing else, so `pip install .` into an existing TF 2.15 / 2.20 environment keeps
    # its TensorFlow, numpy and protobuf.
    if not os.path.exists(os.path.join(REPO_ROOT, "setup.py")):
      self.skipTest("needs the source tree (Bazel's runfiles hold no setup.py)")
    report = os.path.join(self.create_tempdir().full_path, "report.json")
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-build-isolation",
        "--quiet",
        "--disable-pip-version-check",
        "--report",
        report,
        REPO_ROOT,
      ],
      capture_output=True,
      text=True,
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    with open(report, encoding="utf-8") as f:
      installs = [item["metadata"]["name"] for item in json.load(f)["install"]]
    self.assertEqual(installs, ["dolg_tf"])

  def test_license_is_an_spdx_expression(self):
    self.assertEqual(_pyproject()["project"]["license"], "Apache-2.0")


if __name__ == "__main__":
  tf.test.main()
