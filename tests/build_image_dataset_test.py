"""Tests for the GLDv2 dataset builder (gldv2_files, dataset_plan, dataset_writer, the command)."""

import csv
import io
import os

import numpy as np
import tensorflow as tf
from absl import flags
from PIL import Image

from dolg_tf.data import (
  build_image_dataset,
  dataset_config,
  dataset_plan,
  dataset_writer,
  gldv2,
  gldv2_files,
)
from dolg_tf.utils import cli

MISSING = "6a6a6a6a6a6a6a6a"
CORRUPT = "5f5f5f5f5f5f5f5f"
PASSTHROUGH = "0a0a0a0a0a0a0a0a"
EXIF_ROTATED = "7b7b7b7b7b7b7b7b"
CMYK = "4e4e4e4e4e4e4e4e"


def _nested(root, image_id, ext=".jpg"):
  folder = os.path.join(root, image_id[0], image_id[1], image_id[2])
  os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, image_id + ext)


def _read_records(files):
  out = {}
  for record in tf.data.TFRecordDataset(files):
    example = tf.train.Example.FromString(record.numpy())
    parsed = gldv2.parse_example(tf.constant(record))
    out[parsed["id"].numpy().decode()] = (example, parsed)
  return out


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def _exit_status(flag_values):
  """The command's exit status: cli.run turns a UserError into one line and status 2."""
  try:
    return build_image_dataset.run_with_flags(flag_values)
  except cli.UserError:
    return cli.EXIT_USER_ERROR


class BuildImageDatasetTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    root = self.create_tempdir()
    self.root = root.full_path
    self.images = os.path.join(self.root, "train")
    os.makedirs(self.images)
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 20 * 30 * 3).reshape(20, 30, 3)
    rgb = np.clip(smooth + rng.normal(0, 5, smooth.shape), 0, 255).astype(np.uint8)
    self.rgb = rgb
    # id -> landmark id
    self.landmarks = {
      PASSTHROUGH: 100,  # plain RGB JPEG, nested layout
      "1b1b1b1b1b1b1b1b": 100,  # RGBA PNG, flat <id>.png
      "2c2c2c2c2c2c2c2c": 200,  # PNG bytes in a flat <id>.jpg
      "3d3d3d3d3d3d3d3d": 200,  # grayscale JPEG
      CMYK: 300,  # CMYK JPEG
      CORRUPT: 300,  # truncated JPEG
      MISSING: 300,  # no file
      EXIF_ROTATED: 400,  # JPEG with EXIF orientation 6
      "8c8c8c8c8c8c8c8c": 400,  # 16-bit grayscale PNG
      "9d9d9d9d9d9d9d9d": 400,  # plain RGB JPEG
    }
    Image.fromarray(rgb).save(_nested(self.images, PASSTHROUGH), quality=90)
    Image.fromarray(rgb).convert("RGBA").save(os.path.join(self.images, "1b1b1b1b1b1b1b1b.png"))
    Image.fromarray(rgb).save(os.path.join(self.images, "2c2c2c2c2c2c2c2c.jpg"), format="PNG")
    Image.fromarray(rgb).convert("L").save(_nested(self.images, "3d3d3d3d3d3d3d3d"))
    Image.fromarray(rgb).convert("CMYK").save(_nested(self.images, CMYK), quality=95)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    with open(_nested(self.images, CORRUPT), "wb") as f:
      f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(_nested(self.images, EXIF_ROTATED), exif=exif.tobytes(), quality=95)
    gray16 = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    Image.fromarray(gray16).save(_nested(self.images, "8c8c8c8c8c8c8c8c", ".png"))
    Image.fromarray(rgb).save(_nested(self.images, "9d9d9d9d9d9d9d9d"), quality=90)

    self.train_csv = os.path.join(self.root, "train.csv")
    with open(self.train_csv, "w") as f:
      f.write("id,url,landmark_id\n")
      for image_id, landmark in self.landmarks.items():
        f.write(f"{image_id},http://example.com/{image_id}.jpg,{landmark}\n")
    self.clean_csv = os.path.join(self.root, "train_clean.csv")
    with open(self.clean_csv, "w") as f:
      f.write("landmark_id,images\n")
      f.write(f"100,{PASSTHROUGH} 1b1b1b1b1b1b1b1b\n")
      f.write(f"400,{EXIF_ROTATED} 8c8c8c8c8c8c8c8c 9d9d9d9d9d9d9d9d {MISSING}\n")

  def _build(self, out_name="out", **kwargs):
    args = dict(
      output_directory=os.path.join(self.root, out_name),
      train_directory=self.images,
      train_csv_path=self.train_csv,
      num_shards=2,
      validation_split_size=0.2,
      seed=0,
      num_workers=1,
    )
    args.update(kwargs)
    return dataset_writer.build_dataset(dataset_config.DatasetBuildConfig(**args))

  def test_train_csv_run(self):
    summary = self._build()
    out = os.path.join(self.root, "out")
    # Bad images are listed with reasons and skipped.
    self.assertCountEqual([f.image_id for f in summary.failures], [MISSING, CORRUPT])
    rows = _read_csv(os.path.join(out, "failures.csv"))
    self.assertEqual(rows[0], ["id", "path", "reason"])
    reasons = {row[0]: row for row in rows[1:]}
    self.assertCountEqual(reasons, [MISSING, CORRUPT])
    self.assertIn("file not found", reasons[MISSING][2])
    self.assertEqual(reasons[CORRUPT][1], _nested(self.images, CORRUPT))
    self.assertIn("cannot decode", reasons[CORRUPT][2])
    self.assertIn(CORRUPT, reasons[CORRUPT][2])  # the reason names the file
    # Contiguous labels in landmark order, mapping written.
    self.assertEqual(summary.num_classes, 4)
    mapping = _read_csv(os.path.join(out, "relabeling.csv"))
    self.assertEqual(
      mapping, [["landmark_id", "label"], ["100", "0"], ["200", "1"], ["300", "2"], ["400", "3"]]
    )
    label_of = {100: 0, 200: 1, 300: 2, 400: 3}
    # Split sizes: 9 images found, round(0.2 * 9) = 2 planned for validation.
    self.assertLen(summary.planned_validation_ids, 2)
    self.assertEqual(summary.num_train + summary.num_validation, 8)
    train = _read_records(summary.train_files)
    validation = _read_records(summary.validation_files)
    self.assertEqual(
      sorted(validation), sorted(set(summary.planned_validation_ids) - {CORRUPT, MISSING})
    )
    self.assertLen(train, summary.num_train)
    self.assertLen(validation, summary.num_validation)
    self.assertCountEqual(list(train) + list(validation), set(self.landmarks) - {CORRUPT, MISSING})
    records = {**train, **validation}
    for image_id, (example, parsed) in records.items():
      self.assertEqual(int(parsed["label"]), label_of[self.landmarks[image_id]])
      image = parsed["image"].numpy()
      self.assertEqual(image.shape[2], 3)
      self.assertEqual((int(parsed["height"]), int(parsed["width"])), image.shape[:2])
      self.assertEqual(example.features.feature["image/format"].bytes_list.value, [b"JPEG"])
      encoded = example.features.feature["image/encoded"].bytes_list.value[0]
      self.assertEqual(encoded[:2], b"\xff\xd8")  # every record holds a JPEG
    # Every class keeps a found image in the training plan (a corrupt file is
    # only detected while writing, so class 300 may lose its training image).
    planned_val = set(summary.planned_validation_ids)
    found = set(self.landmarks) - {MISSING}
    for landmark in (100, 200, 300, 400):
      members = {i for i in found if self.landmarks[i] == landmark}
      self.assertNotEmpty(members - planned_val)
    # Plain JPEGs are kept byte for byte; EXIF rotation is applied.
    with open(_nested(self.images, PASSTHROUGH), "rb") as f:
      original = f.read()
    example = records[PASSTHROUGH][0]
    self.assertEqual(example.features.feature["image/encoded"].bytes_list.value[0], original)
    self.assertEqual(records[EXIF_ROTATED][1]["image"].shape, (30, 20, 3))
    # CMYK comes out with the right colours.
    cmyk = records[CMYK][1]["image"].numpy().astype(float)
    self.assertLess(np.abs(cmyk - self.rgb).mean(), 8.0)
    # Only the final files are left.
    self.assertCountEqual(
      os.listdir(out),
      [
        "train-00000-of-00002",
        "train-00001-of-00002",
        "validation-00000-of-00002",
        "validation-00001-of-00002",
        "relabeling.csv",
        "failures.csv",
        "dropped_classes.csv",
        "train_images.txt",
        "validation_images.txt",
        "image_labels.csv",
        "validation_solution.csv",
      ],
    )

  def test_train_clean_csv_selects_images(self):
    summary = self._build(train_clean_csv_path=self.clean_csv, validation_split_size=0.0)
    self.assertEqual(summary.num_classes, 2)
    self.assertEqual(
      _read_csv(summary.relabeling_path), [["landmark_id", "label"], ["100", "0"], ["400", "1"]]
    )
    self.assertEqual([f.image_id for f in summary.failures], [MISSING])
    self.assertEqual(summary.validation_files, [])
    records = _read_records(summary.train_files)
    expected = {PASSTHROUGH: 0, "1b1b1b1b1b1b1b1b": 0, EXIF_ROTATED: 1}
    expected.update({"8c8c8c8c8c8c8c8c": 1, "9d9d9d9d9d9d9d9d": 1})
    self.assertEqual({k: int(p["label"]) for k, (_, p) in records.items()}, expected)

  def test_min_images_per_class_with_gldv2_counts_csv_rows(self):
    # Default 1: a class whose only image is missing keeps its label (DELF relabels every class).
    with open(self.train_csv, "a") as f:
      f.write("abababababababab,http://example.com/x.jpg,500\n")
    summary = self._build(validation_split_size=0.0)
    self.assertEqual(summary.num_classes, 5)
    self.assertEqual(_read_csv(summary.relabeling_path)[-1], ["500", "4"])
    self.assertEqual(_read_csv(summary.dropped_path), [["landmark_id", "images"]])
    # 3: landmarks 100, 200 (2 rows) and 500 (1 row) are dropped and listed.
    summary = self._build("min3", validation_split_size=0.0, min_images_per_class=3)
    self.assertEqual(
      _read_csv(summary.relabeling_path), [["landmark_id", "label"], ["300", "0"], ["400", "1"]]
    )
    self.assertEqual(
      _read_csv(summary.dropped_path),
      [["landmark_id", "images"], ["100", "2"], ["200", "2"], ["500", "1"]],
    )
    labels = {int(p["label"]) for _, p in _read_records(summary.train_files).values()}
    self.assertEqual(labels, {0, 1})

  def test_worker_processes_give_identical_files(self):
    one = self._build("one", num_workers=1)
    two = self._build("two", num_workers=2)
    for a, b in zip(one.train_files + one.validation_files, two.train_files + two.validation_files):
      with open(a, "rb") as fa, open(b, "rb") as fb:
        self.assertEqual(fa.read(), fb.read())

  def test_seed_changes_the_split(self):
    splits = {tuple(self._build(f"s{seed}", seed=seed).planned_validation_ids) for seed in range(4)}
    self.assertGreater(len(splits), 1)
    self.assertEqual(
      self._build("again", seed=3).planned_validation_ids,
      self._build("again2", seed=3).planned_validation_ids,
    )

  def test_bad_csv_errors_name_the_file(self):
    bad = os.path.join(self.root, "bad.csv")
    with open(bad, "w") as f:
      f.write("id,url\nabc,http://x\n")
    with self.assertRaisesRegex(ValueError, r"bad\.csv: missing column\(s\) landmark_id"):
      gldv2_files.read_train_csv(bad)
    with open(bad, "w") as f:
      f.write("id,url,landmark_id\nabc,http://x,12\ndef,http://y,twelve\n")
    with self.assertRaisesRegex(ValueError, r"bad\.csv:3: landmark_id 'twelve'"):
      gldv2_files.read_train_csv(bad)
    with self.assertRaisesRegex(FileNotFoundError, "nope.csv"):
      gldv2_files.read_train_clean_csv(os.path.join(self.root, "nope.csv"))
    with self.assertRaisesRegex(ValueError, "train_csv_path"):
      self._build(train_csv_path=None)

  def test_binary_flags(self):
    flag_values = flags.FlagValues()
    build_image_dataset.define_flags(flag_values)
    out = os.path.join(self.root, "cli")
    flag_values(
      [
        "build_image_dataset",
        f"--train_csv_path={self.train_csv}",
        f"--train_directory={self.images}",
        f"--output_directory={out}",
        "--num_shards=1",
        "--num_workers=1",
        "--validation_split_size=0.3",
      ]
    )
    self.assertEqual(_exit_status(flag_values), 0)
    self.assertLen(tf.io.gfile.glob(os.path.join(out, "train-*-of-00001")), 1)
    self.assertLen(tf.io.gfile.glob(os.path.join(out, "validation-*-of-00001")), 1)
    flag_values.train_csv_path = os.path.join(self.root, "missing.csv")
    self.assertEqual(_exit_status(flag_values), 2)


class SplitTest(tf.test.TestCase):
  def test_stratified_exact_size_and_seeded(self):
    sizes = [1, 2, 5, 10, 30]
    labels = np.repeat(np.arange(5), sizes)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(labels.size)]
    train, val = dataset_plan.split_train_validation(labels, 0.25, seed=1)
    self.assertLen(val, 12)  # round(0.25 * 48)
    self.assertEqual(sorted(np.concatenate([train, val]).tolist()), list(range(48)))
    for c, n in enumerate(sizes):
      n_val = int(np.sum(labels[val] == c))
      self.assertGreaterEqual(int(np.sum(labels[train] == c)), 1)
      self.assertBetween(n_val, int(np.floor(0.25 * n)), int(np.ceil(0.25 * n)))
    again = dataset_plan.split_train_validation(labels, 0.25, seed=1)
    self.assertAllEqual(again[1], val)
    other = dataset_plan.split_train_validation(labels, 0.25, seed=2)
    self.assertNotAllEqual(other[1], val)

  def test_edge_cases(self):
    train, val = dataset_plan.split_train_validation([3, 3, 4], 0.0, seed=0)
    self.assertAllEqual(train, [0, 1, 2])
    self.assertEmpty(val)
    train, val = dataset_plan.split_train_validation(
      [7, 8, 9], 0.5, seed=0
    )  # singletons stay in train
    self.assertEmpty(val)
    with self.assertRaisesRegex(ValueError, "validation_split_size"):
      dataset_plan.split_train_validation([1, 2], 1.0, seed=0)

  def test_relabel_sorts_landmark_ids(self):
    self.assertEqual(dataset_plan.relabel([1000, 7, 42, 7]), {7: 0, 42: 1, 1000: 2})


if __name__ == "__main__":
  tf.test.main()
