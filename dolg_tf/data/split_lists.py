"""The images of a built dataset as the files extraction and recognition read.

After a build, the output folder also gets, for the records written:

  * `train_images.txt`, `validation_images.txt`: one image path per line (as
    the builder read it), for `dolg-extract --list_images_path`;
  * `image_labels.csv` (id,landmark_id,split): every written image, its id
    being the name dolg-extract gives its descriptor (the file name without
    extension), for `dolg-recognize --database_labels`;
  * `validation_solution.csv` (id,landmarks): the validation images as a
    Kaggle-style solution file, for `dolg-recognize --solution_path`.

So the validation split of your own images evaluates the trained model:
train images are the database, validation images the queries. Rows are in
path order. No TensorFlow.
"""

import os
from collections.abc import Iterable

from dolg_tf.data import dataset_plan
from dolg_tf.data.dataset_plan import TRAIN_PREFIX, VALIDATION_PREFIX
from dolg_tf.utils import files as file_utils

LIST_FILENAMES = {TRAIN_PREFIX: "train_images.txt", VALIDATION_PREFIX: "validation_images.txt"}
LABELS_FILENAME = "image_labels.csv"
SOLUTION_FILENAME = "validation_solution.csv"


def descriptor_name(path: str) -> str:
  """The name dolg-extract gives an image's descriptor: its file name without extension."""
  return os.path.splitext(os.path.basename(path))[0]


def _csv_field(text: str) -> str:
  if any(c in text for c in ',"\n\r'):
    return '"' + text.replace('"', '""') + '"'
  return text


def write_split_lists(
  output_directory: str, plan: dataset_plan.DatasetPlan, failures: Iterable[dataset_plan.Failure]
) -> None:
  """Writes the four files of the module doc for the records of `plan` not in `failures`."""
  failed = {f.image_id for f in failures}
  written = {
    split: sorted((r for r in plan.splits.get(split, []) if r.image_id not in failed), key=_path)
    for split in LIST_FILENAMES
  }
  for split, filename in LIST_FILENAMES.items():
    text = "".join(r.path + "\n" for r in written[split])
    file_utils.atomic_write_text(os.path.join(output_directory, filename), text)
  rows = sorted(((r, split) for split, records in written.items() for r in records), key=_row_key)
  labels = ["id,landmark_id,split\n"] + [
    f"{_csv_field(descriptor_name(r.path))},{r.label},{split}\n" for r, split in rows
  ]
  file_utils.atomic_write_text(os.path.join(output_directory, LABELS_FILENAME), "".join(labels))
  solution = ["id,landmarks\n"] + [
    f"{_csv_field(descriptor_name(r.path))},{r.label}\n" for r in written[VALIDATION_PREFIX]
  ]
  file_utils.atomic_write_text(os.path.join(output_directory, SOLUTION_FILENAME), "".join(solution))


def _path(record: dataset_plan.PlannedRecord) -> str:
  return record.path


def _row_key(item) -> str:
  return item[0].path
