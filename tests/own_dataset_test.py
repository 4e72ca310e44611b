"""Tests for your own images as a dataset (own_dataset.py, dolg-build-dataset --image_folder ...).

Tiny JPEGs: a folder of class folders and a path,label CSV become TFRecords
with the expected ids, labels, relabeling.csv, dropped_classes.csv and
failures.csv; the stratified split per class; the min-images rule; a corrupt
image, a path leaving the folder; the command's one-line errors.
"""

import csv
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.data import dataset_config, dataset_plan, dataset_writer, gldv2, own_dataset
from tests import testutil

COMMAND = "build_image_dataset"
# class folder -> number of images; 'solo' has one, 'pair' two.
SIZES = {"tower": 10, "bridge": 6, "pair": 2, "solo": 1}


def _save(path, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.random.default_rng(seed).integers(0, 256, [12, 16, 3], dtype=np.uint8)
  Image.fromarray(array).save(path, quality=90)


def _records(files):
  """{id: (label, filename)} of the records of TFRecord files."""
  out = {}
  for record in tf.data.TFRecordDataset(files):
    parsed = gldv2.parse_example(record, decode=False)
    example = tf.train.Example.FromString(record.numpy())
    filename = example.features.feature["image/filename"].bytes_list.value[0].decode()
    out[parsed["id"].numpy().decode()] = (int(parsed["label"]), filename)
  return out


def _csv_rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def _folder_bytes(folder):
  return {
    n: open(os.path.join(folder, n), "rb").read()
    for n in sorted(os.listdir(folder))
    if not n.startswith(".")
  }


class OwnDatasetTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.photos = os.path.join(self.root, "photos")
    seed = 0
    for name, n in SIZES.items():
      for i in range(n):
        seed += 1
        _save(os.path.join(self.photos, name, f"img{i:02d}.jpg"), seed)
    _save(os.path.join(self.photos, "tower", "day2", "img99.JPG"), 99)  # nested, upper case
    _save(os.path.join(self.photos, "loose.jpg"), 98)  # in no class folder: skipped
    os.makedirs(os.path.join(self.photos, "empty"))  # a class folder without images
    for name in ("tower/notes.txt", "tower/.hidden.jpg"):  # skipped
      with open(os.path.join(self.photos, name), "w") as f:
        f.write("x")

  def _build(self, out="out", **kwargs):
    args = dict(
      output_directory=os.path.join(self.root, out),
      image_folder=self.photos,
      num_shards=2,
      num_validation_shards=1,
      validation_split_size=0.25,
      num_workers=1,
    )
    args.update(kwargs)
    return dataset_writer.build_dataset(dataset_config.DatasetBuildConfig(**args))

  def test_image_folder_records_labels_and_files(self):
    summary = self._build()
    out = os.path.join(self.root, "out")
    # Classes by name (not all integers); 'empty' (0 images) is under the default minimum 1.
    self.assertEqual(
      _csv_rows(os.path.join(out, "relabeling.csv")),
      [["class", "label"], ["bridge", "0"], ["pair", "1"], ["solo", "2"], ["tower", "3"]],
    )
    self.assertEqual(
      _csv_rows(os.path.join(out, "dropped_classes.csv")), [["class", "images"], ["empty", "0"]]
    )
    self.assertEqual(summary.num_classes, 4)
    records = {**_records(summary.train_files), **_records(summary.validation_files)}
    label = {"bridge": 0, "pair": 1, "solo": 2, "tower": 3}
    expected = {
      f"{c}/img{i:02d}.jpg": (label[c], f"img{i:02d}.jpg")
      for c, n in SIZES.items()
      for i in range(n)
    }
    expected["tower/day2/img99.JPG"] = (3, "img99.JPG")
    self.assertEqual(records, expected)
    self.assertEqual(_csv_rows(summary.failures_path), [["id", "path", "reason"]])
    self.assertCountEqual(
      os.listdir(out),
      ["train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001"]
      + ["relabeling.csv", "failures.csv", "dropped_classes.csv", "image_labels.csv"]
      + ["train_images.txt", "validation_images.txt", "validation_solution.csv"],  # no .build
    )
    # The files for dolg-extract --list_images_path and dolg-recognize.
    validation = _records(summary.validation_files)
    with open(os.path.join(out, "validation_images.txt")) as f:
      listed = f.read().splitlines()
    self.assertEqual(listed, sorted(os.path.join(self.photos, i) for i in validation))
    with open(os.path.join(out, "train_images.txt")) as f:
      self.assertLen(f.read().splitlines(), summary.num_train)
    labels = _csv_rows(os.path.join(out, "image_labels.csv"))
    self.assertEqual(labels[0], ["id", "landmark_id", "split"])
    self.assertIn(
      ["img99", "3", "train" if "tower/day2/img99.JPG" not in validation else "validation"], labels
    )
    self.assertLen(labels, 1 + 20)
    solution = _csv_rows(os.path.join(out, "validation_solution.csv"))
    self.assertEqual(solution[0], ["id", "landmarks"])
    expected_solution = sorted(
      [os.path.splitext(os.path.basename(i))[0], str(label)] for i, (label, _) in validation.items()
    )
    self.assertEqual(sorted(solution[1:]), expected_solution)

  def test_stratified_split_per_class_is_deterministic(self):
    summary = self._build()
    validation = _records(summary.validation_files)
    per_class = {c: sum(1 for i in validation if i.startswith(c + "/")) for c in SIZES}
    # 20 images, round(0.25 * 20) = 5 for validation: floor(0.25 * n) per class
    # (tower 11 -> 2, bridge 6 -> 1, pair 2 -> 0, solo 1 -> 0), the other 2 to
    # the largest remainders (tower .75, bridge .5, pair .5), ties by the seed.
    self.assertEqual(sum(per_class.values()), 5)
    self.assertEqual(per_class["tower"], 3)
    self.assertEqual(per_class["solo"], 0)  # a single image always stays in train
    self.assertEqual(per_class["bridge"] + per_class["pair"], 2)
    self.assertLessEqual(per_class["pair"], 1)  # every class keeps a training image
    # The same inputs and seed give the same bytes; another seed another split.
    again = self._build("again")
    self.assertEqual(
      _folder_bytes(os.path.join(self.root, "out")), _folder_bytes(os.path.join(self.root, "again"))
    )
    self.assertEqual(again.planned_validation_ids, summary.planned_validation_ids)
    others = {tuple(self._build(f"s{s}", seed=s).planned_validation_ids) for s in range(1, 5)}
    self.assertGreater(len(others | {tuple(summary.planned_validation_ids)}), 1)

  def test_min_images_per_class_drops_and_reports(self):
    summary = self._build(min_images_per_class=3)
    self.assertEqual(summary.dropped_classes, {"empty": 0, "pair": 2, "solo": 1})
    rows = _csv_rows(summary.dropped_path)
    self.assertEqual(rows, [["class", "images"], ["empty", "0"], ["pair", "2"], ["solo", "1"]])
    self.assertEqual(
      _csv_rows(summary.relabeling_path), [["class", "label"], ["bridge", "0"], ["tower", "1"]]
    )
    records = {**_records(summary.train_files), **_records(summary.validation_files)}
    self.assertLen(records, 6 + 11)
    self.assertEqual({label for label, _ in records.values()}, {0, 1})

  def test_corrupt_image_is_a_failure_and_the_run_goes_on(self):
    broken = os.path.join(self.photos, "bridge", "broken.jpg")
    with open(broken, "wb") as f:
      f.write(b"\xff\xd8\xff\xe0 not a jpeg")
    summary = self._build(validation_split_size=0.0)
    rows = _csv_rows(summary.failures_path)
    self.assertLen(rows, 2)
    self.assertEqual(rows[1][:2], ["bridge/broken.jpg", broken])
    self.assertIn("cannot decode", rows[1][2])
    self.assertEqual(summary.num_train, 20)

  def test_numeric_class_names_sort_as_numbers(self):
    key = own_dataset.class_sort_key(["10", "9", "100"])
    self.assertEqual(sorted(["10", "9", "100"], key=key), ["9", "10", "100"])
    key = own_dataset.class_sort_key(["10", "9", "b"])
    self.assertEqual(sorted(["10", "9", "b"], key=key), ["10", "9", "b"])

  def _write_csv(self, name, rows, header=("path", "label")):
    path = os.path.join(self.root, name)
    with open(path, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(header)
      writer.writerows(rows)
    return path

  def test_labels_csv_with_images_dir_and_hostile_paths(self):
    outside = os.path.join(self.root, "secret.jpg")
    _save(outside, 7)
    rows = [
      ("tower/img01.jpg", "12"),
      ("bridge/img00.jpg", "9"),
      ("tower/img00.jpg", "12"),
      ("bridge/img01.jpg", "9"),
      ("tower/img01.jpg", "9"),  # listed again: the first row counts
      ("../secret.jpg", "9"),  # leaves the folder
      (outside, "12"),  # absolute, elsewhere
      ("bridge/nope.jpg", "9"),  # missing
    ]
    csv_path = self._write_csv("mine.csv", rows)
    summary = self._build(
      image_folder=None, labels_csv=csv_path, images_dir=self.photos, validation_split_size=0
    )
    # Integer labels in numeric order: 9 before 12.
    self.assertEqual(
      _csv_rows(summary.relabeling_path), [["class", "label"], ["9", "0"], ["12", "1"]]
    )
    expected = {
      "tower/img00.jpg": (1, "img00.jpg"),
      "tower/img01.jpg": (1, "img01.jpg"),
      "bridge/img00.jpg": (0, "img00.jpg"),
      "bridge/img01.jpg": (0, "img01.jpg"),
    }
    self.assertEqual(_records(summary.train_files), expected)
    reasons = {row[0]: row[2] for row in _csv_rows(summary.failures_path)[1:]}
    self.assertCountEqual(reasons, ["../secret.jpg", outside, "bridge/nope.jpg"])
    self.assertIn("outside the images folder", reasons["../secret.jpg"])
    self.assertIn("--allow_outside_images_dir", reasons[outside])
    self.assertIn("file not found", reasons["bridge/nope.jpg"])
    # Allowed: both outside paths are read (the same file, two ids).
    allowed = self._build(
      "allowed",
      image_folder=None,
      labels_csv=csv_path,
      images_dir=self.photos,
      allow_outside_images_dir=True,
      validation_split_size=0,
    )
    self.assertEqual(allowed.num_train, 6)

  def test_labels_csv_paths_relative_to_its_folder_and_row_order_free(self):
    rows = [(f"photos/{c}/img{i:02d}.jpg", c) for c in ("tower", "bridge") for i in range(SIZES[c])]
    first = self._write_csv("a.csv", rows)
    second = self._write_csv(
      "b.csv", [(p, c, "x") for p, c in rows[::-1]], ("path", "label", "note")
    )
    a = self._build("a", image_folder=None, labels_csv=first)
    self._build("b", image_folder=None, labels_csv=second)
    self.assertEqual(a.num_train + a.num_validation, 16)
    self.assertEqual(
      _folder_bytes(os.path.join(self.root, "a")), _folder_bytes(os.path.join(self.root, "b"))
    )
    self.assertIn("photos/tower/img00.jpg", _records(a.train_files + a.validation_files))

  def test_bad_csv_and_config(self):
    bad = self._write_csv("bad.csv", [("a.jpg", "x")], ("file", "label"))
    with self.assertRaisesRegex(ValueError, r"bad\.csv: missing column\(s\) path"):
      own_dataset.read_labels_csv(bad)
    empty = self._write_csv("empty.csv", [("a.jpg", "")])
    with self.assertRaisesRegex(ValueError, r"empty\.csv:2: empty label"):
      own_dataset.read_labels_csv(empty)
    with self.assertRaisesRegex(FileNotFoundError, "image folder not found"):
      own_dataset.list_image_folder(os.path.join(self.root, "nope"))
    cases = {
      "one source of images": dict(labels_csv=bad),
      "train_directory is for the GLDv2": dict(train_directory=self.photos),
      "images_dir is for labels_csv": dict(images_dir=self.photos),
      "give image_folder": dict(image_folder=None),
    }
    for pattern, kwargs in cases.items():
      with self.subTest(pattern), self.assertRaisesRegex(ValueError, pattern):
        self._build(**kwargs)
    with self.assertRaisesRegex(ValueError, "min_images_per_class must be >= 1"):
      dataset_config.DatasetBuildConfig(min_images_per_class=0)

  def test_plan_is_the_same_from_the_function(self):
    plan = own_dataset.plan_image_folder(self.photos, 0.25, seed=0)
    self.assertEqual(plan.class_column, "class")
    self.assertEqual(plan.num_listed, 20)
    self.assertLen(plan.splits[dataset_plan.VALIDATION_PREFIX], 5)


class CommandTest(tf.test.TestCase):
  def test_happy_path_and_one_line_errors(self):
    root = self.create_tempdir().full_path
    photos = os.path.join(root, "photos")
    for c in ("a", "b"):
      for i in range(3):
        _save(os.path.join(photos, c, f"{i}.jpg"), i)
    out = os.path.join(root, "out")
    result = testutil.run_module(
      "dolg_tf.data.build_image_dataset",
      f"--image_folder={photos}",
      f"--output_directory={out}",
      "--num_shards=1",
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn(
      "5 train + 1 validation records of 2 classes, 0 failures, 0 classes dropped", result.stdout
    )
    self.assertIn(f"--train_file_pattern='{out}/train-*'", result.stdout)
    self.assertIn("--num_classes=2", result.stdout)
    bad_csv = os.path.join(root, "bad.csv")
    with open(bad_csv, "w") as f:
      f.write("file,label\na.jpg,1\n")
    cases = {
      "--no_such_flag": (
        "Unknown command line flag 'no_such_flag'",
        (f"--image_folder={photos}", "--no_such_flag=1"),
      ),
      "missing folder": ("/nope: image folder not found", (f"--image_folder={root}/nope",)),
      "bad column": (r".*bad\.csv: missing column\(s\) path", (f"--labels_csv={bad_csv}",)),
      "min images": (
        "--min_images_per_class must be >= 1",
        (f"--image_folder={photos}", "--min_images_per_class=0"),
      ),
      "two sources": (
        "give one source of images, not --image_folder and --labels_csv",
        (f"--image_folder={photos}", f"--labels_csv={bad_csv}"),
      ),
    }
    for name, (pattern, args) in cases.items():
      with self.subTest(name):
        result = testutil.run_module(
          "dolg_tf.data.build_image_dataset", f"--output_directory={out}", *args
        )
        testutil.assert_one_line_error(self, COMMAND, result, ".*" + pattern)


if __name__ == "__main__":
  tf.test.main()
