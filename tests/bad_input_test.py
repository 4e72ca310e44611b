"""The bad-input matrix: every command answers a user error with one line and exit status 2.

Each case runs one installed command (`python -m <module>`) in a subprocess on
inputs written here, then checks the exit status, that stderr ends with one
line `<command>: error: ...` naming the file or field, that no traceback was
printed, and that nothing partial was left where the case says so. The cases
run two at a time (the commands are small; most exit before TensorFlow loads).
"""

import concurrent.futures
import dataclasses
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf import experiments
from dolg_tf.io import datum_io
from tests import testutil

MODULES = {
  "train": "dolg_tf.train",
  "export": "dolg_tf.export.export_model",
  "extract": "dolg_tf.extraction.extract_features",
  "retrieve": "dolg_tf.retrieval.perform_retrieval",
  "convert": "dolg_tf.convert.convert_official_dolg",
  "build": "dolg_tf.data.build_image_dataset",
  "client": "dolg_tf.export.serving_client",
  "demo": "dolg_tf.demo",
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input: command, arguments ({w} = the workspace), expected message, untouched path."""

  name: str
  command: str
  args: tuple[str, ...]
  message: str  # a regex the error line must match (after "<command>: error: ")
  untouched: str = ""  # a path (under {w}) that must not exist afterwards


CASES = (
  # Training.
  Case("train_unknown_experiment", "train", ("--experiment=nope",), r"--experiment=nope"),
  Case("train_unknown_field", "train", ("--params_override=model.dpth=3",), r"model\.dpth"),
  Case("train_bad_depth", "train", ("--backbone_depth=34",), r"model\.backbone_depth"),
  Case("train_bad_int_flag", "train", ("--max_steps=abc",), r"max_steps"),
  Case(
    "train_no_tfrecords",
    "train",
    ("--experiment=dolg_gldv2", "--logdir={w}/run_a"),
    r"train_file_pattern",
    "{w}/run_a",
  ),
  Case(
    "train_pattern_matches_nothing",
    "train",
    (
      "--experiment=dolg_gldv2",
      "--train_file_pattern={w}/nowhere/train-*",
      "--max_steps=1",
      "--logdir={w}/run_b",
    ),
    r"{w}/nowhere/train-\*",
    "{w}/run_b/checkpoints",
  ),
  Case("train_missing_config_file", "train", ("--config_file={w}/no.yaml",), r"{w}/no\.yaml"),
  Case("train_config_file_not_yaml", "train", ("--config_file={w}/bad.yaml",), r"{w}/bad\.yaml"),
  Case(
    "train_resume_with_another_margin",
    "train",
    ("--logdir={w}/resume", "--head_margin=0.3"),
    r"{w}/resume/config\.json: .*model\.head_margin: 0\.15 -> 0\.3",
    "{w}/resume/checkpoints",
  ),
  Case(
    "train_resume_with_another_depth",
    "train",
    ("--logdir={w}/resume", "--backbone_depth=50"),
    r"model\.backbone_depth: 26 -> 50",
    "{w}/resume/checkpoints",
  ),
  Case(
    "train_logdir_is_a_file", "train", ("--logdir={w}/a_file",), r"--logdir: {w}/a_file is a file"
  ),
  Case("train_both_data_sources", "train", ("--train_file_pattern=x*",), r"exclusive"),
  # Export.
  Case("export_no_logdir", "export", (), r"--logdir"),
  Case("export_missing_logdir", "export", ("--logdir={w}/nothing",), r"{w}/nothing"),
  Case(
    "export_no_checkpoint",
    "export",
    ("--logdir={w}/resume",),
    r"no checkpoint in {w}/resume/checkpoints",
    "{w}/resume/export",
  ),
  Case(
    "export_bad_override",
    "export",
    ("--logdir={w}/resume", "--params_override=export.max_image_size=0"),
    r"export\.max_image_size",
    "{w}/resume/export",
  ),
  # Extraction.
  Case("extract_no_config", "extract", ("--output_dir={w}/out_a",), r"--config", "{w}/out_a"),
  Case(
    "extract_missing_config",
    "extract",
    ("--config={w}/no.pbtxt", "--images_dir={w}/images", "--output_dir={w}/out_b"),
    r"{w}/no\.pbtxt",
    "{w}/out_b",
  ),
  Case(
    "extract_unknown_config_field",
    "extract",
    ("--config={w}/typo.pbtxt", "--images_dir={w}/images", "--output_dir={w}/out_c"),
    r"{w}/typo\.pbtxt:1:\d+: .*modle_path",
    "{w}/out_c",
  ),
  Case(
    "extract_negative_scale",
    "extract",
    ("--config={w}/negative.pbtxt", "--images_dir={w}/images", "--output_dir={w}/out_d"),
    r"{w}/negative\.pbtxt: image_scales\[0\]",
    "{w}/out_d",
  ),
  Case(
    "extract_missing_model",
    "extract",
    ("--config={w}/no_model.pbtxt", "--images_dir={w}/images", "--output_dir={w}/out_e"),
    r"model_path",
    "{w}/out_e",
  ),
  Case(
    "extract_missing_images_dir",
    "extract",
    ("--config={w}/good.pbtxt", "--images_dir={w}/no_images", "--output_dir={w}/out_f"),
    r"{w}/no_images",
    "{w}/out_f",
  ),
  Case(
    "extract_missing_list",
    "extract",
    ("--config={w}/good.pbtxt", "--list_images_path={w}/no.txt", "--output_dir={w}/out_g"),
    r"{w}/no\.txt",
    "{w}/out_g",
  ),
  Case(
    "extract_gnd_without_images_dir",
    "extract",
    ("--config={w}/good.pbtxt", "--gnd_path={w}/gnd.pkl", "--output_dir={w}/out_h"),
    r"--images_dir",
    "{w}/out_h",
  ),
  Case(
    "extract_query_crop_without_gnd",
    "extract",
    ("--config={w}/good.pbtxt", "--images_dir={w}/images", "--query_crop", "--output_dir={w}/o"),
    r"--query_crop",
    "{w}/o",
  ),
  Case(
    "extract_truncated_saved_model",
    "extract",
    ("--config={w}/truncated.pbtxt", "--images_dir={w}/images", "--output_dir={w}/out_k"),
    r"{w}/truncated_model: cannot load the SavedModel",
    "{w}/out_k",
  ),
  Case(
    "extract_output_is_a_file",
    "extract",
    ("--config={w}/good.pbtxt", "--images_dir={w}/images", "--output_dir={w}/a_file"),
    r"{w}/a_file",
  ),
  Case(
    "extract_shards_with_local_features",
    "extract",
    (
      "--config={w}/delg.pbtxt",
      "--images_dir={w}/images",
      "--output_format=shards",
      "--output_dir={w}/out_i",
    ),
    r"per image",
  ),
  Case(
    "extract_unexpected_argument",
    "extract",
    ("--config={w}/good.pbtxt", "--output_dir={w}/out_j", "stray"),
    r"stray",
    "{w}/out_j",
  ),
  # Retrieval.
  Case("retrieve_no_flags", "retrieve", (), r"--dataset_file_path"),
  Case(
    "retrieve_missing_gnd",
    "retrieve",
    (
      "--dataset_file_path={w}/no.pkl",
      "--query_features_dir={w}/descriptors",
      "--index_features_dir={w}/descriptors",
    ),
    r"{w}/no\.pkl",
  ),
  Case(
    "retrieve_text_gnd",
    "retrieve",
    (
      "--dataset_file_path={w}/text_gnd.pkl",
      "--query_features_dir={w}/descriptors",
      "--index_features_dir={w}/descriptors",
    ),
    r"{w}/text_gnd\.pkl",
  ),
  Case(
    "retrieve_missing_descriptor_dir",
    "retrieve",
    (
      "--dataset_file_path={w}/gnd.pkl",
      "--query_features_dir={w}/no_descriptors",
      "--index_features_dir={w}/descriptors",
    ),
    r"{w}/no_descriptors",
  ),
  Case(
    "retrieve_missing_query_descriptors",
    "retrieve",
    (
      "--dataset_file_path={w}/gnd.pkl",
      "--query_features_dir={w}/few_descriptors",
      "--index_features_dir={w}/descriptors",
    ),
    r"q1",
  ),
  Case(
    "retrieve_non_finite_descriptor",
    "retrieve",
    (
      "--dataset_file_path={w}/gnd.pkl",
      "--query_features_dir={w}/nan_descriptors",
      "--index_features_dir={w}/descriptors",
    ),
    r"{w}/nan_descriptors/q1\.dolg_global: non-finite",
  ),
  Case(
    "retrieve_dimension_mismatch",
    "retrieve",
    (
      "--dataset_file_path={w}/gnd.pkl",
      "--query_features_dir={w}/descriptors",
      "--index_features_dir={w}/wide_descriptors",
    ),
    r"8-D .*16-D",
  ),
  Case(
    "retrieve_truncated_descriptor",
    "retrieve",
    (
      "--dataset_file_path={w}/gnd.pkl",
      "--query_features_dir={w}/truncated_descriptors",
      "--index_features_dir={w}/descriptors",
    ),
    r"{w}/truncated_descriptors/q1\.dolg_global",
  ),
  Case(
    "retrieve_bad_gv_threshold",
    "retrieve",
    (
      "--dataset_file_path={w}/gnd.pkl",
      "--query_features_dir={w}/descriptors",
      "--index_features_dir={w}/descriptors",
      "--use_geometric_verification",
      "--gv_residual_threshold=-1",
    ),
    r"residual_threshold",
  ),
  # Conversion.
  Case(
    "convert_missing_checkpoint",
    "convert",
    ("--checkpoint={w}/no.pyth", "--output_dir={w}/converted_a"),
    r"{w}/no\.pyth",
    "{w}/converted_a",
  ),
  Case(
    "convert_bad_depth",
    "convert",
    ("--checkpoint={w}/a_file", "--output_dir={w}/converted_b", "--depth=abc"),
    r"--depth",
    "{w}/converted_b",
  ),
  Case("convert_no_flags", "convert", (), r"checkpoint"),
  # Dataset building.
  Case("build_no_flags", "build", (), r"train_csv_path|output_directory"),
  # Serving client.
  Case("client_no_images", "client", (), r"image"),
  # Demo.
  Case("demo_unknown_model", "demo", ("--model=xyz",), r"--model=xyz"),
  Case("demo_negative_steps", "demo", ("--max_steps=-1", "--workdir={w}/demo"), r"max_steps"),
)


def _write_workspace(w: str) -> None:
  """The inputs the cases refer to."""
  os.makedirs(os.path.join(w, "images"))
  rng = np.random.default_rng(0)
  for name in ("q1", "q2", "d1", "d2"):
    pixels = rng.integers(0, 256, [40, 30, 3], dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(w, "images", f"{name}.jpg"))
  with open(os.path.join(w, "a_file"), "w") as f:
    f.write("not a folder\n")
  with open(os.path.join(w, "bad.yaml"), "w") as f:
    f.write("model: [unclosed\n")
  export_dir = testutil.tiny_export("dolg")
  truncated = os.path.join(w, "truncated_model")
  shutil.copytree(export_dir, truncated)
  for name in os.listdir(os.path.join(truncated, "variables")):
    if name.startswith("variables.data"):
      os.truncate(os.path.join(truncated, "variables", name), 100)
  texts = {
    "truncated.pbtxt": f'model_path: "{truncated}"\n',
    "good.pbtxt": f'model_path: "{export_dir}"\n',
    "typo.pbtxt": f'modle_path: "{export_dir}"\n',
    "negative.pbtxt": f'model_path: "{export_dir}"\nimage_scales: -1\n',
    "no_model.pbtxt": f'model_path: "{w}/no_model"\nimage_scales: 1\n',
    "delg.pbtxt": (
      f'model_path: "{testutil.tiny_export("delg")}"\nuse_local_features: true\n'
      "image_scales: 1\nlocal_config { max_feature_num: 4 }\n"
    ),
  }
  for name, text in texts.items():
    with open(os.path.join(w, name), "w") as f:
      f.write(text)
  gnd = {
    "imlist": ["d1", "d2"],
    "qimlist": ["q1", "q2"],
    "gnd": [{"easy": [0], "hard": [], "junk": [], "bbx": None}] * 2,
  }
  with open(os.path.join(w, "gnd.pkl"), "wb") as f:
    pickle.dump(gnd, f)
  with open(os.path.join(w, "text_gnd.pkl"), "w") as f:
    f.write("this is not a pickle\n")
  for folder, names in (("descriptors", ("q1", "q2", "d1", "d2")), ("few_descriptors", ("q2",))):
    os.makedirs(os.path.join(w, folder))
    for name in names:
      vector = rng.normal(size=8).astype(np.float32)
      datum_io.write_to_file(os.path.join(w, folder, f"{name}.dolg_global"), vector)
  for folder, dim in (("nan_descriptors", 8), ("wide_descriptors", 16)):
    os.makedirs(os.path.join(w, folder))
    for name in ("q1", "q2", "d1", "d2"):
      vector = rng.normal(size=dim).astype(np.float32)
      if folder == "nan_descriptors" and name == "q1":
        vector[3] = np.nan
      datum_io.write_to_file(os.path.join(w, folder, f"{name}.dolg_global"), vector)
  shutil.copytree(os.path.join(w, "descriptors"), os.path.join(w, "truncated_descriptors"))
  os.truncate(os.path.join(w, "truncated_descriptors", "q1.dolg_global"), 7)
  # A run folder started with the tiny synthetic experiment (config only, no checkpoint).
  config_lib.save_config(experiments.get("dolg_synthetic"), os.path.join(w, "resume"))


def _run(case: Case, w: str) -> subprocess.CompletedProcess:
  args = [a.replace("{w}", w) for a in case.args]
  return testutil.run_module(
    MODULES[case.command], *args, cwd=w, env=dict(os.environ, PYTHONWARNINGS="ignore")
  )


class BadInputTest(tf.test.TestCase, parameterized.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workspace = os.path.join(tf.compat.v1.test.get_temp_dir(), "bad_input")
    _write_workspace(cls.workspace)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      runs = {case.name: pool.submit(_run, case, cls.workspace) for case in CASES}
      cls.results = {name: future.result() for name, future in runs.items()}

  def test_cases_are_many_and_cover_every_command(self):
    self.assertGreaterEqual(len(CASES), 35)
    self.assertEqual({c.command for c in CASES}, set(MODULES))
    self.assertLen({c.name for c in CASES}, len(CASES))

  @parameterized.named_parameters((case.name, case) for case in CASES)
  def test_one_line_and_exit_2(self, case):
    result = self.results[case.name]
    w = self.workspace
    self.assertEqual(result.returncode, 2, f"{case.name}: {result.stderr[-2000:]}")
    self.assertNotIn("Traceback", result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    prefix = re.escape(MODULES[case.command].rsplit(".", 1)[1]) + r": error: "
    self.assertRegex(last, "^" + prefix)
    self.assertRegex(last[last.index("error: ") :], case.message.replace("{w}", re.escape(w)))
    if case.untouched:
      self.assertFalse(os.path.exists(case.untouched.replace("{w}", w)), case.untouched)


class ServingClientNoServerTest(tf.test.TestCase):
  def test_no_server_answering_is_one_line(self):
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]  # closed again when the block ends
    image = os.path.join(self.create_tempdir().full_path, "a.jpg")
    Image.fromarray(np.zeros([8, 8, 3], np.uint8)).save(image)
    result = subprocess.run(
      [sys.executable, "-m", MODULES["client"], f"--server=localhost:{port}", image],
      capture_output=True,
      text=True,
      timeout=120,
    )
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    self.assertNotIn("Traceback", result.stderr)
    self.assertIn(f"localhost:{port}", result.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
  tf.test.main()
