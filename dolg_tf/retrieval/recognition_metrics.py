"""GLDv2 recognition metrics (DELF's google_landmarks_dataset) and Kaggle's CSV files.

    solution = recognition_metrics.read_solution("solution.csv")
    public, private = recognition_metrics.read_predictions("submission.csv", solution)
    gap = recognition_metrics.global_average_precision(public, solution.public)

Global Average Precision (GAP, micro AP; DELF's `GlobalAveragePrecision`):

* `predictions` hold at most one (landmark id, score) per test image; a test
  image without a prediction has none (it is not counted below).
* The predictions are sorted by score, highest first; equal scores keep the
  test ids in ascending order (DELF sorts by (id, landmark) first, then by
  score with a stable sort: the tie order is ascending id).
* Walking down that list, prediction i (1-based) is correct when its landmark
  is one of the test image's ground-truth landmarks; every prediction counts
  in i, including predictions for test images without a landmark (non-landmark
  images, empty ground truth: always wrong).
* `GAP = (1 / M) * sum over correct predictions of (correct so far) / i`, with
  M the number of test images of the solution that have a landmark (whether
  predicted or not). With `ignore_non_landmark_images` (DELF's
  ignore_non_gt_test_images) predictions for non-landmark images are skipped.
  No test image with a landmark: NaN (DELF divides by zero).

Top-1 accuracy (DELF's `Top1Accuracy`): correct predictions over the test
images with a landmark (non-landmark images are left out; a missing prediction
is wrong). Retrieval mAP@100 of the neighbour lists is
`metrics.gldv2_map_at_k` (`neighbour_map_at_k` builds its solution from the
database labels).

Kaggle files (DELF's dataset_file_io): the solution CSV has columns
`id,landmarks,Usage`, landmarks space-separated integers (empty: a
non-landmark image), Usage `Public`, `Private` or `Ignored` (ignored images
are not scored and their predictions are skipped; any other value is an
error). Without a Usage column every row is scored as one set, "All". The
submission CSV has columns `id,landmarks`, landmarks "<landmark id> <score>"
or empty (no prediction). Like DELF, a prediction with other than two fields
is refused (only one landmark per image is scored), a repeated or unknown id
is refused and blank rows are skipped; a repeated solution id and a NaN score
are refused too. Every error is one line naming the file and line.
"""

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence

from dolg_tf.retrieval import metrics
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import untrusted

USAGES = ("Public", "Private", "Ignored")
ALL = "All"


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One test image's predicted landmark and its confidence."""

  landmark_id: int
  score: float


@dataclasses.dataclass(frozen=True)
class Solution:
  """A recognition solution CSV: test id -> ground-truth landmark ids ([] = non-landmark).

  Attributes:
    public: the Public rows (all scored rows when the file has no Usage).
    private: the Private rows.
    ignored: ids of the Ignored rows, in file order.
    has_usage: whether the file had a Usage column.
  """

  public: dict[str, list[int]]
  private: dict[str, list[int]]
  ignored: list[str]
  has_usage: bool = True

  def subsets(self) -> dict[str, dict[str, list[int]]]:
    """{"Public": ..., "Private": ...} (with Usage) or {"All": ...} (without)."""
    if not self.has_usage:
      return {ALL: self.public}
    return {"Public": self.public, "Private": self.private}


@dataclasses.dataclass(frozen=True)
class RecognitionMetrics:
  """The metrics of one subset (values in [0, 1], NaN when undefined)."""

  gap: float
  gap_landmarks_only: float
  accuracy: float
  map_at_100: float
  num_images: int
  num_landmark_images: int

  def format(self, name: str) -> str:
    """One line, percent with two decimals (mAP@100 'n/a' without neighbour lists)."""
    map_text = "n/a" if math.isnan(self.map_at_100) else f"{100 * self.map_at_100:.2f}"
    return (
      f"({name}) GAP {100 * self.gap:.2f}, GAP landmarks only {100 * self.gap_landmarks_only:.2f}, "
      f"top-1 accuracy {100 * self.accuracy:.2f}, mAP@100 {map_text} "
      f"({self.num_images} images, {self.num_landmark_images} with a landmark)"
    )


def sorted_predictions(predictions: Mapping[str, Prediction]) -> list[tuple[str, Prediction]]:
  """Predictions by descending score, equal scores by ascending test id (DELF's order)."""
  return sorted(predictions.items(), key=lambda item: (-item[1].score, item[0]))


def global_average_precision(
  predictions: Mapping[str, Prediction],
  solution: Mapping[str, Sequence[int]],
  ignore_non_landmark_images: bool = False,
) -> float:
  """GAP (module doc).

  Raises:
    ValueError: a prediction for an id absent from `solution`.
  """
  num_positives = sum(1 for landmarks in solution.values() if landmarks)
  total = correct = 0
  gap = 0.0
  for test_id, prediction in sorted_predictions(predictions):
    if test_id not in solution:
      raise ValueError(f"prediction for test image {test_id}, which is not in the solution")
    if ignore_non_landmark_images and not solution[test_id]:
      continue
    total += 1
    if prediction.landmark_id in solution[test_id]:
      correct += 1
      gap += correct / total
  return gap / num_positives if num_positives else float("nan")


def top1_accuracy(
  predictions: Mapping[str, Prediction], solution: Mapping[str, Sequence[int]]
) -> float:
  """Correct predictions over the test images with a landmark (NaN if none)."""
  with_landmark = [test_id for test_id, landmarks in solution.items() if landmarks]
  correct = sum(
    1
    for test_id in with_landmark
    if test_id in predictions and predictions[test_id].landmark_id in solution[test_id]
  )
  return correct / len(with_landmark) if with_landmark else float("nan")


def neighbour_map_at_k(
  neighbours: Mapping[str, Sequence[str]],
  solution: Mapping[str, Sequence[int]],
  database_labels: Mapping[str, int],
  k: int = 100,
) -> float:
  """GLDv2 retrieval mAP@k of ranked database ids (metrics.gldv2_map_at_k).

  A database image is relevant to a test image when its label is one of the
  test image's landmarks; test images without a landmark, or whose landmarks
  have no database image, are not counted (NaN if none is).
  """
  by_label: dict[int, list[str]] = {}
  for image_id, label in database_labels.items():
    by_label.setdefault(label, []).append(image_id)
  relevant = {
    test_id: [image for label in landmarks for image in by_label.get(label, ())]
    for test_id, landmarks in solution.items()
  }
  return metrics.gldv2_map_at_k(neighbours, relevant, k)


def evaluate_subset(
  predictions: Mapping[str, Prediction | None],
  solution: Mapping[str, Sequence[int]],
  neighbours: Mapping[str, Sequence[str]] | None = None,
  database_labels: Mapping[str, int] | None = None,
) -> RecognitionMetrics:
  """GAP (with and without non-landmark images), accuracy and mAP@100 of one subset.

  Args:
    predictions: test id -> Prediction or None (no landmark predicted); ids
      outside `solution` are left out.
    solution: test id -> ground-truth landmark ids.
    neighbours: test id -> ranked database ids (for mAP@100; NaN without).
    database_labels: database id -> landmark id (for mAP@100).
  """
  kept = {i: p for i, p in predictions.items() if p is not None and i in solution}
  map_at_100 = float("nan")
  if neighbours is not None and database_labels is not None:
    map_at_100 = neighbour_map_at_k(neighbours, solution, database_labels, 100)
  return RecognitionMetrics(
    gap=global_average_precision(kept, solution),
    gap_landmarks_only=global_average_precision(kept, solution, True),
    accuracy=top1_accuracy(kept, solution),
    map_at_100=map_at_100,
    num_images=len(solution),
    num_landmark_images=sum(1 for v in solution.values() if v),
  )


# ----------------------------------------------------------------------------- CSV files


def _rows(path: str, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict]]]:
  """(header, [(line number, row dict)]) of a CSV with a header; blank rows skipped."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: file not found")
  with open(path, "rb") as f:
    reader = csv.DictReader(untrusted.utf8_lines(f, path))
    header = list(reader.fieldnames or [])
    missing = [c for c in required if c not in header]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header: {header})")
    rows = []
    for row in untrusted.csv_rows(reader, path):
      if None in row or any(value is None for value in row.values()):
        raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} fields")
      rows.append((reader.line_num, row))
  return header, rows


def _landmark_ids(value: str, path: str, line: int) -> list[int]:
  try:
    return [int(token) for token in value.split()]
  except ValueError:
    raise ValueError(f"{path}:{line}: landmarks '{value}' are not integers") from None


def read_solution(path: str) -> Solution:
  """Reads a recognition solution CSV (module doc).

  Raises:
    FileNotFoundError / ValueError: one line naming the file (and line).
  """
  public, private, ignored, seen = {}, {}, [], set()
  header, rows = _rows(path, ("id", "landmarks"))
  has_usage = "Usage" in header
  for line, row in rows:
    test_id = row["id"].strip()
    if not test_id:
      raise ValueError(f"{path}:{line}: empty id")
    if test_id in seen:
      raise ValueError(f"{path}:{line}: test image {test_id} is repeated")
    seen.add(test_id)
    usage = row["Usage"].strip() if has_usage else "Public"
    if usage not in USAGES:
      raise ValueError(f"{path}:{line}: Usage '{usage}' is not one of {', '.join(USAGES)}")
    if usage == "Ignored":
      ignored.append(test_id)
      continue
    landmarks = _landmark_ids(row["landmarks"], path, line)
    (public if usage == "Public" else private)[test_id] = landmarks
  return Solution(public, private, ignored, has_usage)


def _parse_prediction(value: str, path: str, line: int, test_id: str) -> Prediction:
  fields = value.split()
  if len(fields) != 2:
    raise ValueError(
      f"{path}:{line}: prediction for {test_id} must be '<landmark id> <score>', "
      f"found {len(fields)} field(s)"
    )
  try:
    landmark, score = int(fields[0]), float(fields[1])
  except ValueError:
    message = f"prediction '{value.strip()}' is not '<int> <float>'"
    raise ValueError(f"{path}:{line}: {message}") from None
  if math.isnan(score):
    raise ValueError(f"{path}:{line}: score of {test_id} is NaN")
  return Prediction(landmark, score)


def read_predictions(
  path: str, solution: Solution
) -> tuple[dict[str, Prediction], dict[str, Prediction]]:
  """Reads a submission CSV against a solution: (public, private) predictions (module doc).

  Raises:
    FileNotFoundError / ValueError: one line naming the file and line.
  """
  public, private, seen = {}, {}, set()
  ignored = set(solution.ignored)
  for line, row in _rows(path, ("id", "landmarks"))[1]:
    test_id = row["id"].strip()
    if test_id in seen:
      raise ValueError(f"{path}:{line}: test image {test_id} is repeated")
    seen.add(test_id)
    if test_id in ignored or not row["landmarks"].strip():
      continue
    prediction = _parse_prediction(row["landmarks"], path, line, test_id)
    if test_id in solution.public:
      public[test_id] = prediction
    elif test_id in solution.private:
      private[test_id] = prediction
    else:
      raise ValueError(f"{path}:{line}: test image {test_id} is not in the solution")
  return public, private


def format_score(score: float) -> str:
  """The shortest text that reads back as the same float."""
  return repr(float(score))


def write_submission(
  path: str, predictions: Mapping[str, Prediction | None], ids: Iterable[str] | None = None
) -> None:
  """Writes a Kaggle submission CSV atomically: `id,landmarks`, one row per test image.

  Args:
    path: the CSV file (its folder must exist).
    predictions: test id -> Prediction, or None for no landmark (empty field).
    ids: row order (default: the order of `predictions`); ids without a
      prediction get an empty field.

  Raises:
    IOError: naming `path`.
  """
  ids = list(predictions) if ids is None else list(ids)
  with file_utils.atomic_open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["id", "landmarks"])
    for test_id in ids:
      p = predictions.get(test_id)
      writer.writerow([test_id, "" if p is None else f"{p.landmark_id} {format_score(p.score)}"])
