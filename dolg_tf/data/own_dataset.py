"""Your own images as a dataset source: a folder of class folders, or a CSV of (path, label).

    entries, failures = own_dataset.list_image_folder("photos")
    entries, failures = own_dataset.read_labels_csv("mine.csv", images_dir="photos")

Either gives `gldv2_files.ImageEntry`s (image id, class name, path) that
dataset_plan relabels and splits exactly as GLDv2's rows.

  * `--image_folder=photos/`: every sub-folder of `photos/` is a class, named
    by the folder; its images are the regular files below it (sub-folders
    included) whose name ends in an image extension (IMAGE_EXTENSIONS, any
    case). Hidden names (starting with '.') and other files are skipped (a
    log line counts them); files directly in `photos/` belong to no class and
    are skipped too. An image's id is its path relative to `photos/`
    ('tower/IMG_1.jpg').
  * `--labels_csv=mine.csv`: columns `path,label` (others ignored); a path is
    relative to `--images_dir`, or to the CSV's own folder without it; its id
    is the path as normalised ('sub/a.jpg'). A path that leaves that folder
    (absolute elsewhere, or '..' escaping it) is never opened: it is a
    failure row, unless allow_outside. A missing file is a failure row. A
    path listed twice keeps its first row. Labels are any non-empty strings.

Classes are ordered by `class_sort_key` (numerically when every name is an
integer, else by name), so the relabeling is 0..C-1 in that order. Entries
are returned sorted by id: the dataset does not depend on the order of the
CSV's rows or of the directory listing.

No TensorFlow.
"""

import collections
import csv
import os
from collections.abc import Iterable

from absl import logging

from dolg_tf.data import dataset_plan
from dolg_tf.data.dataset_plan import DatasetPlan, Failure
from dolg_tf.data.gldv2_files import ImageEntry
from dolg_tf.utils import untrusted

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_COLUMNS = ("path", "label")


def is_image_name(name: str) -> bool:
  """A visible file name with an image extension (any case)."""
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def class_sort_key(names: Iterable[str]):
  """The key that orders class names: as integers if every one is one, else as strings."""
  names = list(names)
  if names and all(_is_int(n) for n in names):
    return lambda name: (int(name), name)
  return lambda name: (0, name)


def _is_int(text: str) -> bool:
  try:
    int(text)
  except ValueError:
    return False
  return True


def _class_images(root: str, class_name: str) -> tuple[list[ImageEntry], int]:
  """(the images below one class folder, the number of other files skipped)."""
  entries, skipped = [], 0
  folder = os.path.join(root, class_name)
  for parent, dirs, names in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      path = os.path.join(parent, name)
      if not is_image_name(name) or not os.path.isfile(path):
        skipped += 1
        continue
      image_id = os.path.relpath(path, root).replace(os.sep, "/")
      entries.append(ImageEntry(image_id, class_name, path))
  return entries, skipped


def list_image_folder(root: str) -> tuple[list[ImageEntry], collections.Counter]:
  """The images of a folder of class folders (module doc), sorted by id, and {class: images}.

  Every class folder counts, empty or not.

  Raises:
    FileNotFoundError: the folder does not exist or is not a folder.
    ValueError: it holds no class folder.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root}: image folder not found (one sub-folder per class expected)")
  with os.scandir(root) as it:
    items = sorted(it, key=lambda e: e.name)
  classes = [e.name for e in items if not e.name.startswith(".") and e.is_dir()]
  loose = [e.name for e in items if not e.name.startswith(".") and not e.is_dir()]
  if not classes:
    raise ValueError(f"{root}: no class folder in it (one sub-folder per class expected)")
  if loose:
    logging.warning("%s: %d files outside the class folders skipped", root, len(loose))
  entries, skipped, listed = [], 0, collections.Counter()
  for name in classes:
    found, other = _class_images(root, name)
    entries += found
    skipped += other
    listed[name] = len(found)
  if skipped:
    logging.warning(
      "%s: %d other files skipped (hidden, no image extension or not a regular file)", root, skipped
    )
  logging.info("%s: %d images in %d class folders", root, len(entries), len(classes))
  return sorted(entries, key=lambda e: e.image_id), listed


def outside_reason(path: str, images_dir: str) -> str:
  """Why a CSV path is refused (it leaves `images_dir`, lexically), or ''."""
  if untrusted.is_inside(path, images_dir):
    return ""
  return (
    f"{path}: outside the images folder {images_dir} (an absolute path or '..' in the entry); "
    "not read unless --allow_outside_images_dir is given"
  )


def _csv_rows(path: str) -> list[tuple[int, str, str]]:
  """(line, path, label) of every row of a labels CSV, checked (module doc)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: labels CSV not found")
  rows = []
  with open(path, "rb") as f:
    reader = csv.DictReader(untrusted.utf8_lines(f, path))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(
        f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames}; "
        "expected path,label)"
      )
    for row in untrusted.csv_rows(reader, path):
      image_path = (row["path"] or "").strip()
      label = (row["label"] or "").strip()
      if not image_path or not label:
        raise ValueError(f"{path}:{reader.line_num}: empty {'path' if not image_path else 'label'}")
      rows.append((reader.line_num, image_path, label))
  return rows


def read_labels_csv(
  csv_path: str, images_dir: str | None = None, allow_outside: bool = False
) -> tuple[list[ImageEntry], list[Failure], collections.Counter]:
  """The images of a path,label CSV (module doc), sorted by id, the failures, the rows per class.

  Args:
    csv_path: the CSV file.
    images_dir: the folder its paths are relative to (default: the CSV's folder).
    allow_outside: read paths outside that folder too.

  Returns:
    (entries whose file exists, failures: paths outside the folder or missing,
    {label: rows listing it (failures included)}).

  Raises:
    FileNotFoundError: the CSV or images_dir is missing.
    ValueError: naming the file (and line): a missing column, an empty field.
  """
  base = images_dir or os.path.dirname(os.path.abspath(csv_path))
  if not os.path.isdir(base):
    raise FileNotFoundError(f"{base}: images folder not found")
  entries, failures, seen, duplicates = [], [], set(), 0
  listed = collections.Counter()
  for _, image_path, label in _csv_rows(csv_path):
    path = os.path.normpath(os.path.join(base, image_path))
    image_id = os.path.normpath(image_path).replace(os.sep, "/")
    if image_id in seen:
      duplicates += 1
      continue
    seen.add(image_id)
    listed[label] += 1
    reason = "" if allow_outside else outside_reason(path, base)
    if not reason and not os.path.isfile(path):
      reason = f"{path}: file not found (listed in {csv_path})"
    if reason:
      logging.warning("%s", reason)
      failures.append(Failure(image_id, path, reason))
    else:
      entries.append(ImageEntry(image_id, label, path))
  if duplicates:
    logging.warning("%s: %d repeated paths ignored (the first row counts)", csv_path, duplicates)
  logging.info("%s: %d images listed, %d not found or refused", csv_path, len(seen), len(failures))
  return sorted(entries, key=lambda e: e.image_id), failures, listed


def plan_image_folder(
  root: str, validation_split_size: float, seed: int, min_images_per_class: int = 1
) -> DatasetPlan:
  """The dataset plan of a folder of class folders (dataset_plan.plan_entries)."""
  dataset_plan.check_fraction(validation_split_size)
  dataset_plan.check_min_images(min_images_per_class)
  entries, listed = list_image_folder(root)
  return dataset_plan.plan_entries(
    listed,
    entries,
    [],
    validation_split_size,
    seed,
    min_images_per_class,
    key=class_sort_key(listed),
    class_column="class",
  )


def plan_labels_csv(
  csv_path: str,
  images_dir: str | None,
  allow_outside: bool,
  validation_split_size: float,
  seed: int,
  min_images_per_class: int = 1,
) -> DatasetPlan:
  """The dataset plan of a path,label CSV (dataset_plan.plan_entries)."""
  dataset_plan.check_fraction(validation_split_size)
  dataset_plan.check_min_images(min_images_per_class)
  entries, failures, listed = read_labels_csv(csv_path, images_dir, allow_outside)
  return dataset_plan.plan_entries(
    listed,
    entries,
    failures,
    validation_split_size,
    seed,
    min_images_per_class,
    key=class_sort_key(listed),
    class_column="class",
  )
