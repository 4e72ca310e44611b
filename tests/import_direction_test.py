"""Imports between dolg_tf's packages point one way, and none is hidden inside a function.

The layers, lowest first (a module may import its own layer and those below):

  0  dolg_tf (package), dolg_tf.utils, dolg_tf.protos,
     dolg_tf.keras_api (the one Keras 2 API); dolg_tf.utils.dir_lock imports no dolg_tf module
  1  dolg_tf.io                      DELF wire formats, extraction config files, the
                                    SavedModel contract (savedmodel_contract, export_section)
  2  dolg_tf.config, config_sections, experiments, run_layout
  3  dolg_tf.data, dolg_tf.model
  4  dolg_tf.training
  5  dolg_tf.export
  6  dolg_tf.extraction              consumes SavedModels, never model code
  7  dolg_tf.retrieval
  8  dolg_tf.convert, dolg_tf.visualization (pictures and the HTML report)
  9  dolg_tf.train, dolg_tf.demo, dolg_tf.visualize   the top-level binaries, and the
     dolg-retrieve command dolg_tf.retrieval.perform_retrieval (its --report_dir draws)
"""

import ast
import os
import re

import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(REPO_ROOT, "dolg_tf")

LAYERS = {
  "dolg_tf": 0,
  "dolg_tf.utils": 0,
  "dolg_tf.utils.dir_lock": 0,
  "dolg_tf.protos": 0,
  "dolg_tf.keras_api": 0,
  "dolg_tf.io": 1,
  "dolg_tf.config": 2,
  "dolg_tf.config_sections": 2,
  "dolg_tf.experiments": 2,
  "dolg_tf.run_layout": 2,
  "dolg_tf.data": 3,
  "dolg_tf.model": 3,
  "dolg_tf.training": 4,
  "dolg_tf.export": 5,
  "dolg_tf.extraction": 6,
  "dolg_tf.retrieval": 7,
  "dolg_tf.convert": 8,
  "dolg_tf.visualization": 8,
  "dolg_tf.train": 9,
  "dolg_tf.demo": 9,
  "dolg_tf.visualize": 9,
  # The dolg-retrieve command: its --report_dir calls dolg_tf.visualization.
  "dolg_tf.retrieval.perform_retrieval": 9,
}
# Extraction reads exported SavedModels only (see the architecture notes).
FORBIDDEN = {
  "dolg_tf.extraction": ("dolg_tf.model", "dolg_tf.training"),
  # The generic folder lock (training, export, extraction) stands alone.
  "dolg_tf.utils.dir_lock": ("dolg_tf",),
}
# The only function-level imports of project modules, each to keep a command's
# start-up free of TensorFlow; the import line (or the line above) says so.
ALLOWED_FUNCTION_LEVEL = {
  # The dataset commands: --help and missing-flag errors answer before TensorFlow loads.
  ("dolg_tf.data.build_image_dataset", "dolg_tf.data.dataset_writer"),
  ("dolg_tf.data.synthetic", "dolg_tf.data.gldv2"),
  # Bad flags, configs and image lists are reported before TensorFlow loads.
  ("dolg_tf.extraction.extract_features", "dolg_tf.extraction.extractor"),
}


def layer_of(module: str) -> tuple[str, int]:
  """The longest LAYERS prefix of `module` and its rank."""
  parts = module.split(".")
  for end in range(len(parts), 0, -1):
    prefix = ".".join(parts[:end])
    if prefix in LAYERS:
      return prefix, LAYERS[prefix]
  raise KeyError(f"{module} is in no layer of LAYERS")


def project_modules():
  for root, _, files in os.walk(PACKAGE_DIR):
    for name in sorted(files):
      if name.endswith(".py") and not name.endswith("_pb2.py"):
        path = os.path.join(root, name)
        relative = os.path.relpath(path, REPO_ROOT)[: -len(".py")].replace(os.sep, ".")
        yield path, relative.removesuffix(".__init__")


def project_imports(tree: ast.AST, module: str):
  """(imported dolg_tf module, line, is at module level) for every import in `tree`."""
  top_level = {id(node) for node in tree.body}
  package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
      names = [f"{base}.{a.name}" for a in node.names]
    for name in names:
      if name == "dolg_tf" or name.startswith("dolg_tf."):
        yield name, node.lineno, id(node) in top_level


def _resolve(name: str) -> str:
  """`dolg_tf.io.datum_io` stays; `dolg_tf.io.config_io.DolgConfig` -> its module."""
  parts = name.split(".")
  while parts:
    candidate = os.path.join(REPO_ROOT, *parts)
    if os.path.isdir(candidate) or os.path.exists(candidate + ".py"):
      return ".".join(parts)
    parts.pop()
  return name


class ImportDirectionTest(tf.test.TestCase):
  def test_every_module_has_a_layer(self):
    for _, module in project_modules():
      layer_of(module)

  def test_imports_point_down_and_sit_at_module_level(self):
    problems = []
    for path, module in project_modules():
      own_layer, own_rank = layer_of(module)
      with open(path, encoding="utf-8") as f:
        source = f.read()
      lines = source.splitlines()
      tree = ast.parse(source, path)
      for name, line, top_level in project_imports(tree, module):
        target = _resolve(name)
        where = f"{os.path.relpath(path, REPO_ROOT)}:{line}"
        if not top_level:
          commented = "#" in lines[line - 1] or lines[line - 2].strip().startswith("#")
          if (module, target) not in ALLOWED_FUNCTION_LEVEL or not commented:
            problems.append(f"{where}: function-level import of {target}")
        target_layer, target_rank = layer_of(target)
        if target_rank > own_rank:
          problems.append(
            f"{where}: {own_layer} (layer {own_rank}) imports {target} ({target_rank})"
          )
        for forbidden in FORBIDDEN.get(own_layer, ()):
          if target.startswith(forbidden):
            problems.append(f"{where}: {own_layer} must not import {target}")
    self.assertEqual(problems, [])

  def test_checker_sees_a_violation(self):
    tree = ast.parse("import os\n\ndef f():\n  from dolg_tf.model import dolg\n")
    found = list(project_imports(tree, "dolg_tf.io.datum_io"))
    self.assertEqual(found, [("dolg_tf.model.dolg", 4, False)])
    self.assertEqual(layer_of(_resolve("dolg_tf.model.dolg")), ("dolg_tf.model", 3))

  def test_keras_only_through_keras_api(self):
    # One Keras 2 on both stacks: `tf.keras` is Keras 3 on TF >= 2.16 and `keras` may be too.
    pattern = re.compile(r"\btf\.keras\b|^\s*(import keras\b|from keras\b|import tf_keras\b)", re.M)
    # The API itself, the test that uses a user's Keras 3 beside it, and this check.
    exempt = {
      "dolg_tf/keras_api.py",
      "tests/keras3_coexistence_test.py",
      "tests/import_direction_test.py",
    }
    problems = []
    for folder in ("dolg_tf", "tests", "benchmarks"):
      for root, _, files in os.walk(os.path.join(REPO_ROOT, folder)):
        for name in sorted(files):
          relative = os.path.relpath(os.path.join(root, name), REPO_ROOT)
          if not name.endswith(".py") or relative.replace(os.sep, "/") in exempt:
            continue
          with open(os.path.join(REPO_ROOT, relative), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
              if pattern.search(line):
                problems.append(f"{relative}:{number}: {line.strip()}")
    self.assertEqual(problems, [])

  def test_every_test_file_runs_its_tests_as_a_script(self):
    # Bazel runs `python tests/x_test.py`: without tf.test.main() it runs no test and passes.
    folder = os.path.join(REPO_ROOT, "tests")
    missing = []
    for name in sorted(os.listdir(folder)):
      if name.endswith("_test.py"):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
          if 'if __name__ == "__main__":' not in f.read():
            missing.append(name)
    self.assertEqual(missing, [])

  def test_no_top_level_export_or_protos_package_is_installed(self):
    # pyproject installs dolg_tf only; the top-level export/ holds scripts, not a package.
    self.assertFalse(os.path.exists(os.path.join(REPO_ROOT, "export", "__init__.py")))
    self.assertFalse(os.path.exists(os.path.join(REPO_ROOT, "protos", "__init__.py")))
    with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
      self.assertIn('include = ["dolg_tf", "dolg_tf.*"]', f.read())


if __name__ == "__main__":
  tf.test.main()
