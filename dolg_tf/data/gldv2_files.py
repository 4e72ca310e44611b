"""GLDv2's files on disk: the train.csv / train_clean.csv readers and where an image id's file is.

  * train.csv (columns id, url, landmark_id): one row per image.
  * train_clean.csv (columns landmark_id, images): one row per landmark, its
    image ids separated by spaces.
  * images as `<images_dir>/<id[0]>/<id[1]>/<id[2]>/<id>.jpg` (the layout of
    the GLDv2 tar files) or `<images_dir>/<id>.jpg`; `.jpeg` and `.png` are
    tried after `.jpg`.

No TensorFlow: the dataset builder and extraction's GLDv2 image lists use it
before (or without) loading TensorFlow.
"""

import csv
import dataclasses
import io
import os
from collections.abc import Iterable, Sequence

from absl import logging

from dolg_tf.utils import untrusted

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(frozen=True)
class ImageEntry:
  """One image of the CSV: id, original landmark id and (once found) its file."""

  image_id: str
  landmark_id: int
  path: str | None = None


def _open_csv(path: str, required: Sequence[str]) -> tuple[csv.DictReader, io.BufferedReader]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: CSV file not found")
  f = open(path, "rb")  # closed by the caller
  # UTF-8 (a leading BOM dropped); a byte that is not is one error naming file, line, offset.
  reader = csv.DictReader(untrusted.utf8_lines(f, path))
  try:
    fieldnames = reader.fieldnames
  except ValueError:
    f.close()
    raise
  missing = [c for c in required if c not in (fieldnames or [])]
  if missing:
    f.close()
    raise ValueError(
      f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})"
    )
  return reader, f


def _landmark(value: str, path: str, line: int) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{path}:{line}: landmark_id '{value}' is not an integer") from None


def _first_of_each_id(pairs: Iterable[tuple[str, int]], path: str) -> list[ImageEntry]:
  """An entry per (image id, landmark id) pair, in order; a repeated id keeps its first pair."""
  entries, seen, duplicates = [], set(), 0
  for image_id, landmark in pairs:
    if image_id in seen:
      duplicates += 1
      continue
    seen.add(image_id)
    entries.append(ImageEntry(image_id, landmark))
  if duplicates:
    logging.warning("%s: %d duplicate image ids ignored", path, duplicates)
  return entries


def read_train_csv(path: str) -> list[ImageEntry]:
  """Reads GLDv2 train.csv (id,url,landmark_id); duplicate ids keep the first row.

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: naming the file (and line), on a missing column, an empty id
      or a non-integer landmark id.
  """
  reader, f = _open_csv(path, ("id", "landmark_id"))

  def pairs():
    for row in untrusted.csv_rows(reader, path):
      image_id = (row["id"] or "").strip()
      if not image_id:
        raise ValueError(f"{path}:{reader.line_num}: empty id")
      yield image_id, _landmark(row["landmark_id"], path, reader.line_num)

  with f:
    return _first_of_each_id(pairs(), path)


def read_train_clean_csv(path: str) -> list[ImageEntry]:
  """Reads GLDv2 train_clean.csv (landmark_id, space-separated `images`).

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: naming the file (and line), on a missing column or a
      non-integer landmark id.
  """
  reader, f = _open_csv(path, ("landmark_id", "images"))

  def pairs():
    for row in untrusted.csv_rows(reader, path):
      landmark = _landmark(row["landmark_id"], path, reader.line_num)
      for image_id in (row["images"] or "").split():
        yield image_id, landmark

  with f:
    return _first_of_each_id(pairs(), path)


def id_problem(image_id: str) -> str:
  """Why an id cannot name a file in the image folder ('/', '\\' or '..' in it), or ''.

  GLDv2 ids are hex digits; such an id would lead elsewhere, so it is never
  looked up.
  """
  if "/" in image_id or "\\" in image_id or ".." in image_id:
    return (
      f"id {image_id!r} contains '/', '\\' or '..': ids are file names in the image folder "
      "(hex digits in GLDv2); not read"
    )
  return ""


def candidate_paths(images_dir: str, image_id: str) -> list[str]:
  """Where an image may be: GLDv2 nested layout first, then flat, per extension."""
  paths = []
  for ext in IMAGE_EXTENSIONS:
    if len(image_id) >= 3:
      paths.append(os.path.join(images_dir, image_id[0], image_id[1], image_id[2], image_id + ext))
    paths.append(os.path.join(images_dir, image_id + ext))
  return paths


def find_image(images_dir: str, image_id: str) -> str | None:
  """The first existing candidate path of `image_id`, or None (always for an `id_problem`)."""
  if id_problem(image_id):
    return None
  for path in candidate_paths(images_dir, image_id):
    if os.path.isfile(path):
      return path
  return None


def image_path(images_dir: str, image_id: str) -> str:
  """The file of a GLDv2 image id: the one `find_image` finds, else where it should be.

  A missing image gets its first candidate (nested `.jpg`) path, so a reader
  reports that file as missing; an id with an `id_problem` gets
  `<images_dir>/<id>.jpg` without any file being looked at.
  """
  if id_problem(image_id):
    return os.path.join(images_dir, image_id + IMAGE_EXTENSIONS[0])
  return find_image(images_dir, image_id) or candidate_paths(images_dir, image_id)[0]
