"""Tests for the GLDv2 dataset builder on Apache Beam (beam_dataset.py, dolg-build-dataset-beam).

The command runs on the DirectRunner with two worker processes; its output
folder must be byte for byte the single-process builder's. A rerun after an
interrupted one (a shard deleted, a shard without its done record, a
temporary file of a dead writer) rewrites only what is missing.
"""

import csv
import io
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.data import beam_dataset, dataset_config, dataset_plan, dataset_writer
from dolg_tf.utils import beam_cli
from dolg_tf.utils import files as file_utils
from tests import testutil

NUM_IMAGES = 36
MISSING = "ffff000000000000"
CORRUPT = "eeee000000000000"
PNG = "dddd000000000000"
TWO_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")
SHARDS = {"num_shards": 3, "num_validation_shards": 2}


def _config(out, images, **kwargs):
  """The build of `images` into `out` (one process when dataset_writer writes it)."""
  return dataset_config.DatasetBuildConfig(
    output_directory=out, train_directory=images, num_workers=1, **kwargs
  )


def _image_id(i):
  return f"{i:03x}" + "a" * 13


def _folder_bytes(folder):
  """{name: bytes} of the visible files of a folder."""
  return {
    name: open(os.path.join(folder, name), "rb").read()
    for name in sorted(os.listdir(folder))
    if not name.startswith(".")
  }


class BeamDatasetTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.images = os.path.join(cls.root, "train")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(NUM_IMAGES):
      image_id = _image_id(i)
      folder = os.path.join(cls.images, image_id[0], image_id[1], image_id[2])
      os.makedirs(folder, exist_ok=True)
      array = rng.integers(0, 256, [24, 32, 3], dtype=np.uint8)
      Image.fromarray(array).save(os.path.join(folder, image_id + ".jpg"), quality=90)
      rows.append((image_id, "", 1000 + i % 6))
    Image.fromarray(array).save(os.path.join(cls.images, PNG + ".png"))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    with open(os.path.join(cls.images, CORRUPT + ".jpg"), "wb") as f:
      f.write(buffer.getvalue()[:100])
    rows += [(PNG, "", 1000), (CORRUPT, "", 1001), (MISSING, "", 1002)]
    cls.csv = os.path.join(cls.root, "train.csv")
    with open(cls.csv, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(("id", "url", "landmark_id"))
      writer.writerows(rows)
    cls.reference = os.path.join(cls.root, "single")
    cls.reference_summary = dataset_writer.build_dataset(
      _config(
        cls.reference, cls.images, train_csv_path=cls.csv, validation_split_size=0.25, **SHARDS
      )
    )

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _run(self, out, **kwargs):
    args = dict(train_csv_path=self.csv, validation_split_size=0.25, **SHARDS)
    args.update(kwargs)
    return beam_dataset.run_pipeline(
      _config(out, self.images, **args), options=beam_cli.pipeline_options(["test"])
    )

  def test_the_reference_has_every_kind_of_record(self):
    summary = self.reference_summary
    self.assertEqual(summary.num_train + summary.num_validation, NUM_IMAGES + 1)  # + the PNG
    self.assertCountEqual([f.image_id for f in summary.failures], [MISSING, CORRUPT])
    self.assertEqual(summary.failures[0].image_id, MISSING)  # Missing files come first.
    self.assertLen(summary.train_files, 3)
    self.assertLen(summary.validation_files, 2)

  def test_shards_follow_the_plan_position(self):
    plan = dataset_plan.plan_dataset(self.images, self.csv, validation_split_size=0.25)
    for split, count in (("train", 3), ("validation", 2)):
      for shard in range(count):
        path = os.path.join(self.reference, f"{split}-{shard:05d}-of-{count:05d}")
        ids = [
          tf.train.Example.FromString(r.numpy()).features.feature["image/id"].bytes_list.value[0]
          for r in tf.data.TFRecordDataset(path)
        ]
        expected = [
          r.image_id.encode()
          for r in plan.shard_records(split, shard, count)
          if r.image_id != CORRUPT
        ]
        self.assertEqual(ids, expected)

  def test_command_with_two_workers_equals_the_single_process_builder(self):
    out = os.path.join(self.create_tempdir().full_path, "out")
    result = testutil.run_module(
      "dolg_tf.data.beam_build_dataset",
      f"--train_csv_path={self.csv}",
      f"--train_directory={self.images}",
      f"--output_directory={out}",
      "--validation_split_size=0.25",
      "--num_shards=3",
      "--num_validation_shards=2",
      *TWO_WORKERS,
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("5 shards written, 0 skipped", result.stdout)
    self.assertIn("2 failures", result.stdout)
    self.assertEqual(_folder_bytes(out), _folder_bytes(self.reference))

  def test_rerun_rewrites_only_what_is_missing(self):
    out = self.create_tempdir().full_path
    summary, counts = self._run(out)
    self.assertEqual(counts["shards_written"], 5)
    self.assertEqual(counts["records_written"], NUM_IMAGES + 1)
    self.assertEqual(counts["images_failed"], 1)
    self.assertEqual(summary.num_validation, self.reference_summary.num_validation)
    # Interrupted states: a shard gone, a shard renamed but without its done
    # record, a temporary file of a dead writer.
    os.unlink(os.path.join(out, "train-00001-of-00003"))
    os.unlink(os.path.join(out, beam_dataset.WORK_DIR, "validation-00000-of-00002.done.json"))
    stale = os.path.join(out, ".train-00002-of-00003.999999999.0123abcd.tmp")
    with open(stale, "wb") as f:
      f.write(b"partial")
    summary, counts = self._run(out)
    self.assertEqual(counts["shards_written"], 2)
    self.assertEqual(counts["shards_skipped"], 3)
    self.assertFalse(os.path.exists(stale))
    self.assertEqual(_folder_bytes(out), _folder_bytes(self.reference))
    self.assertEqual(
      [f.image_id for f in summary.failures],
      [f.image_id for f in self.reference_summary.failures],
    )
    self.assertEmpty([n for n in os.listdir(out) if file_utils.TEMP_NAME_PATTERN.match(n)])

  def test_another_plan_rewrites_every_shard(self):
    out = self.create_tempdir().full_path
    self._run(out)
    _, counts = self._run(out, seed=1)
    self.assertEqual(counts["shards_skipped"], 0)
    self.assertEqual(counts["shards_written"], 5)
    single = self.create_tempdir().full_path
    dataset_writer.build_dataset(
      _config(
        single, self.images, train_csv_path=self.csv, validation_split_size=0.25, seed=1, **SHARDS
      )
    )
    self.assertEqual(_folder_bytes(out), _folder_bytes(single))

  def test_user_errors_are_one_line_and_exit_2(self):
    out = self.create_tempdir().full_path
    cases = {
      "nope.csv": (f"--train_csv_path={self.root}/nope.csv",),
      "--no_such_flag": (f"--train_csv_path={self.csv}", "--no_such_flag=1"),
      "num_shards": (f"--train_csv_path={self.csv}", "--num_shards=0"),
    }
    for expected, args in cases.items():
      with self.subTest(expected):
        result = testutil.run_module(
          "dolg_tf.data.beam_build_dataset",
          f"--train_directory={self.images}",
          f"--output_directory={out}",
          *args,
        )
        self.assertEqual(result.returncode, 2, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertLen(lines, 1, result.stderr)
        self.assertIn(expected, lines[0])


class BeamOwnFolderTest(tf.test.TestCase):
  """--image_folder on Beam: the single-process builder's bytes; a rerun resumes."""

  def test_same_records_as_the_single_process_builder_and_resume(self):
    root = self.create_tempdir().full_path
    photos = os.path.join(root, "photos")
    rng = np.random.default_rng(1)
    for name, n in (("gate", 5), ("arch", 4), ("pair", 2)):
      os.makedirs(os.path.join(photos, name))
      for i in range(n):
        array = rng.integers(0, 256, [10, 14, 3], dtype=np.uint8)
        Image.fromarray(array).save(os.path.join(photos, name, f"{i}.jpg"), quality=90)
    with open(os.path.join(photos, "arch", "broken.jpg"), "wb") as f:
      f.write(b"\xff\xd8 not a jpeg")
    args = dict(image_folder=photos, min_images_per_class=3, validation_split_size=0.3, **SHARDS)
    single = os.path.join(root, "single")
    reference = dataset_writer.build_dataset(
      dataset_config.DatasetBuildConfig(output_directory=single, num_workers=1, **args)
    )
    self.assertEqual(reference.dropped_classes, {"pair": 2})
    self.assertLen(reference.failures, 1)
    out = os.path.join(root, "beam")
    config = dataset_config.DatasetBuildConfig(output_directory=out, **args)
    options = beam_cli.pipeline_options(["test"])
    summary, counts = beam_dataset.run_pipeline(config, options=options)
    self.assertEqual(counts["shards_written"], 5)
    self.assertEqual(_folder_bytes(out), _folder_bytes(single))
    self.assertEqual(summary.dropped_classes, reference.dropped_classes)
    # Resume: only the deleted shard is written again, to the same bytes.
    os.unlink(os.path.join(out, "train-00002-of-00003"))
    _, counts = beam_dataset.run_pipeline(config, options=options)
    self.assertEqual((counts["shards_written"], counts["shards_skipped"]), (1, 4))
    self.assertEqual(_folder_bytes(out), _folder_bytes(single))

  def test_missing_image_folder_is_one_line(self):
    root = self.create_tempdir().full_path
    result = testutil.run_module(
      "dolg_tf.data.beam_build_dataset",
      f"--image_folder={root}/nope",
      f"--output_directory={root}/out",
    )
    testutil.assert_one_line_error(
      self, "beam_build_dataset", result, ".*/nope: image folder not found"
    )


if __name__ == "__main__":
  tf.test.main()
