"""Where extraction's images come from: folders, lists, GLDv2 CSVs and ground truth, as tasks.

An ImageTask is one image to describe: its output id, file path and optional
crop box. Image ids are file names without their extension (as DELF names
outputs, and GLDv2's nested `a/b/c/<id>.jpg` layout needs; the layout itself
is data/gldv2_files.py's). Two inputs with the same id (`img.bmp` and
`img.webp`, or `100CANON/IMG_0001.JPG` and `101CANON/IMG_0001.JPG`) cannot
both have an output: the first in input order (folder walks are sorted) keeps
the id, each later one is refused (`mark_collisions`: a failures.tsv row
`duplicate image id ...: already used by <first path>`). Names starting with
"." are hidden files, skipped everywhere: a folder walk (`list_images`) never
lists them (nor hidden folders), and one named by a list or ground truth is
refused with that reason, never extracted (its output would be a hidden file
that no run finds again). A refused task is a failure row whose file is never
opened (`refusal_reason`).
"""

import csv
import dataclasses
import io
import os
from collections.abc import Iterable, Sequence

from absl import logging

from dolg_tf.data import gldv2_files
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import untrusted

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HIDDEN_REASON = (
  "hidden file name (starts with '.'): not extracted, as folder walks skip hidden files; "
  "rename the file to extract it"
)


@dataclasses.dataclass(frozen=True)
class ImageTask:
  """One image to describe: output id, file path and optional crop box (x1, y1, x2, y2)."""

  image_id: str
  path: str
  box: tuple[float, float, float, float] | None = None
  # Why the file must not be read (e.g. outside --images_dir): a failure row, never opened.
  refused: str = ""


def image_id_from_path(path: str) -> str:
  """The output id of an image: its file name without the extension."""
  return os.path.splitext(os.path.basename(path))[0]


def is_hidden(name: str) -> bool:
  """Whether a file name (or image id) is hidden: starts with '.' (or is empty)."""
  return not name or name.startswith(".")


def list_images(images_dir: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Image files under `images_dir`, recursively, sorted (case-insensitive extensions).

  Hidden files and folders (names starting with '.') are skipped. Other
  non-folders with an image extension are listed whatever they are (a named
  pipe, a socket, a link to a device): loading refuses them without reading
  (images.open_file), each a failure.

  Raises:
    FileNotFoundError: naming the folder, if it does not exist.
  """
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"{images_dir}: images folder not found")
  extensions = tuple(e.lower() for e in extensions)
  paths = []
  for root, dirs, files in os.walk(images_dir):
    dirs[:] = [d for d in dirs if not is_hidden(d)]
    for name in files:
      if not is_hidden(name) and name.lower().endswith(extensions):
        paths.append(os.path.join(root, name))
  return sorted(paths)


def read_image_list(
  list_path: str, images_dir: str | None = None, allow_outside: bool = True
) -> list[str]:
  """Image paths from a UTF-8 text file, one per line (blank lines and `#` comments skipped).

  A relative entry is taken relative to `images_dir` when given, else to the
  current directory. An entry without an image extension whose `<entry>.jpg`
  exists refers to that file (DELF lists name images without extension); with
  `allow_outside` False that is only looked for inside `images_dir`.
  Missing files, hidden names (starting with '.') and entries outside
  `images_dir` are kept: the run reports them as failures (`outside_reason`).

  Raises:
    FileNotFoundError: naming the list, if it does not exist.
    ValueError: naming the list, the byte offset and the line, if it is not UTF-8.
  """
  text = untrusted.decode_text(file_utils.read_bytes(list_path), list_path)
  paths = []
  for line in text.splitlines():
    entry = line.strip()
    if not entry or entry.startswith("#"):
      continue
    path = os.path.join(images_dir, entry) if images_dir else entry
    probe = allow_outside or not images_dir or untrusted.is_inside(path, images_dir)
    if probe and not path.lower().endswith(IMAGE_EXTENSIONS) and not os.path.exists(path):
      if os.path.exists(path + ".jpg"):
        path += ".jpg"
    paths.append(path)
  return paths


def read_csv_image_ids(csv_path: str) -> list[str]:
  """The `id` column of a Google Landmarks v2 CSV (index.csv, test.csv, train.csv), in order.

  Ids are returned as written; `gldv2_id_reason` says which must not be read.

  Raises:
    FileNotFoundError: naming the file, if it does not exist.
    ValueError: naming the file, if it is not UTF-8, has no `id` column or a
      row without an id.
  """
  text = untrusted.decode_text(file_utils.read_bytes(csv_path), csv_path)
  reader = csv.DictReader(io.StringIO(text))
  if "id" not in (reader.fieldnames or []):
    raise ValueError(f"{csv_path}: no 'id' column (header: {reader.fieldnames})")
  ids = []
  for line, row in enumerate(untrusted.csv_rows(reader, csv_path), 2):
    image_id = (row.get("id") or "").strip()
    if not image_id:
      raise ValueError(f"{csv_path}:{line}: empty id")
    ids.append(image_id)
  return ids


def outside_reason(path: str, images_dir: str) -> str:
  """Why `path` (an entry joined to `images_dir`) is refused, or '' if it lies inside it.

  The rule is lexical: os.path.normpath of the path must be `images_dir` or
  below it, so absolute entries elsewhere and `..` escapes are refused;
  symbolic links inside the folder are followed.
  """
  if untrusted.is_inside(path, images_dir):
    return ""
  return (
    f"{path}: outside the images folder {images_dir} (an absolute path or '..' in the entry); "
    "not read unless --allow_outside_images_dir is given"
  )


def gldv2_id_reason(image_id: str) -> str:
  """Why a GLDv2 id is refused ('/', '\\' or '..' in it: ids are file names), or ''."""
  problem = gldv2_files.id_problem(image_id)
  return f"GLDv2 {problem}" if problem else ""


def refusal_reason(task: ImageTask) -> str:
  """Why `task` is a failure without its file being opened (refused, hidden name), or ''."""
  if task.refused:
    return task.refused
  return HIDDEN_REASON if is_hidden(task.image_id) else ""


def tasks_from_paths(paths: Iterable[str], boxes: dict | None = None) -> list[ImageTask]:
  """One task per path, in order; `boxes` maps an image id to its crop box.

  Image ids repeat when two files differ only in folder or extension: the
  first path in input order keeps the id, each later one is refused
  (`mark_collisions`) and becomes a failures row. A path listed twice is kept
  once.
  """
  boxes = boxes or {}
  tasks = []
  for path in paths:
    image_id = image_id_from_path(path)
    box = boxes.get(image_id)
    tasks.append(ImageTask(image_id, path, None if box is None else tuple(float(v) for v in box)))
  return mark_collisions(tasks)


# The start of a failures.tsv reason of an image whose id an earlier input has.
COLLISION_REASON_PREFIX = "duplicate image id "


def collision_reason(image_id: str, kept_path: str) -> str:
  """The failures.tsv reason of an image not extracted because `kept_path` has its id."""
  return (
    f"{COLLISION_REASON_PREFIX}{image_id!r}: already used by {kept_path}; not extracted "
    "(outputs are named by file name without extension: rename the file, or extract "
    "each folder into its own output folder)"
  )


def mark_collisions(tasks: Sequence[ImageTask]) -> list[ImageTask]:
  """`tasks` with each repeated image id refused (`collision_reason`) after its first use.

  Among tasks not refused already, the first of an id (input order) keeps
  it; a later task with the same path and box is dropped (listed twice),
  one with another path or box gets `refused` naming the path that kept the
  id. Deterministic for a given input order (folder walks are sorted).
  """
  marked, first = [], {}
  for task in tasks:
    if refusal_reason(task):
      marked.append(task)
      continue
    earlier = first.setdefault(task.image_id, task)
    if earlier is task:
      marked.append(task)
    elif (earlier.path, earlier.box) == (task.path, task.box):
      logging.info("%s: listed twice, extracted once", task.path)
    else:
      reason = collision_reason(task.image_id, earlier.path)
      marked.append(dataclasses.replace(task, refused=reason))
  return marked
