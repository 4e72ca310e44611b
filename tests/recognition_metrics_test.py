"""Tests for dolg_tf.retrieval.recognition_metrics: DELF's GAP and accuracy, Kaggle CSVs."""

import os

import numpy as np
import tensorflow as tf

from dolg_tf.retrieval import recognition_metrics as rm

P = rm.Prediction


def _hand_case():
  """Ties and non-landmark images; the arithmetic is in test_gap_hand_computed."""
  solution = {"a": [1], "b": [2], "c": [3, 4], "aa": [], "e": [5], "f": []}
  # Inserted in an order that is neither the score nor the id order.
  predictions = {"c": P(4, 0.5), "aa": P(7, 0.5), "b": P(9, 0.9), "a": P(1, 0.5)}
  return predictions, solution


class GapTest(tf.test.TestCase):
  def test_gap_hand_computed(self):
    # M = test images with a landmark = a, b, c, e = 4 (e has no prediction; f, aa have none).
    # Sorted by score, ties by ascending id: b (0.9), a (0.5), aa (0.5), c (0.5).
    #   i=1 b: 9 not in [2]          wrong
    #   i=2 a: 1 in [1]              correct, 1 correct so far -> 1/2
    #   i=3 aa: non-landmark         wrong (still counts in i)
    #   i=4 c: 4 in [3, 4]           correct, 2 so far -> 2/4
    # GAP = (1/2 + 2/4) / 4 = 1/4.
    predictions, solution = _hand_case()
    self.assertAllClose(rm.global_average_precision(predictions, solution), 0.25)

  def test_gap_ignoring_non_landmark_images(self):
    # aa skipped: b wrong (i=1), a correct 1/2 (i=2), c correct 2/3 (i=3): (1/2 + 2/3) / 4 = 7/24.
    predictions, solution = _hand_case()
    self.assertAllClose(rm.global_average_precision(predictions, solution, True), 7 / 24)

  def test_tie_order_is_ascending_id(self):
    # a now wrong (8), aa now a landmark image predicted right (7); M = a, b, c, aa, e = 5.
    # Ascending ids: b (i=1, wrong), a (i=2, wrong), aa (i=3, correct: 1/3), c (i=4, 2/4):
    #   GAP = (1/3 + 1/2) / 5 = 1/6.
    # Insertion or descending-id order (c, aa, a) would give (1/2 + 2/3) / 5 = 7/30.
    predictions, solution = _hand_case()
    predictions["a"] = P(8, 0.5)
    solution["aa"] = [7]
    self.assertAllClose(rm.global_average_precision(predictions, solution), 1 / 6)

  def test_top1_accuracy(self):
    # Correct: a, c; images with a landmark: a, b, c, e -> 2/4.
    predictions, solution = _hand_case()
    self.assertAllClose(rm.top1_accuracy(predictions, solution), 0.5)

  def test_delf_reference_values(self):
    # DELF's metrics_test case and its expected values (0.166667, 0.333333, 0.333333).
    solution = {"0123": [0, 12], "0223": [100, 200, 300], "0323": [1], "0423": [], "0523": []}
    predictions = {"0223": P(0, 0.01), "0323": P(1, 10.0), "0423": P(150, 15.0)}
    self.assertAllClose(rm.global_average_precision(predictions, solution), 1 / 6)
    self.assertAllClose(rm.global_average_precision(predictions, solution, True), 1 / 3)
    self.assertAllClose(rm.top1_accuracy(predictions, solution), 1 / 3)

  def test_no_landmark_images_is_nan(self):
    self.assertTrue(np.isnan(rm.global_average_precision({"x": P(1, 1.0)}, {"x": []})))
    self.assertTrue(np.isnan(rm.top1_accuracy({}, {"x": []})))

  def test_prediction_outside_solution_refused(self):
    with self.assertRaisesRegex(ValueError, "zz"):
      rm.global_average_precision({"zz": P(1, 1.0)}, {"a": [1]})

  def test_neighbour_map_at_k(self):
    # t1 (landmark 1, relevant d1, d3): ranks d1, d2, d3 -> (1/1 + 2/3) / 2 = 5/6.
    # t2 (landmark 2, relevant d2): ranks d1, d2 -> 1/2. t3 non-landmark: not counted.
    labels = {"d1": 1, "d2": 2, "d3": 1}
    neighbours = {"t1": ["d1", "d2", "d3"], "t2": ["d1", "d2"], "t3": ["d2"]}
    solution = {"t1": [1], "t2": [2], "t3": []}
    self.assertAllClose(rm.neighbour_map_at_k(neighbours, solution, labels), (5 / 6 + 1 / 2) / 2)

  def test_evaluate_subset_drops_none_predictions(self):
    predictions, solution = _hand_case()
    predictions["f"] = None
    result = rm.evaluate_subset(predictions, solution)
    self.assertAllClose(result.gap, 0.25)
    self.assertEqual((result.num_images, result.num_landmark_images), (6, 4))
    self.assertTrue(np.isnan(result.map_at_100))
    self.assertIn("(Public) GAP 25.00", result.format("Public"))
    self.assertIn("accuracy 50.00, mAP@100 n/a (6 images, 4 with a landmark)", result.format("x"))


class CsvTest(tf.test.TestCase):
  def _file(self, name, text):
    path = os.path.join(self.create_tempdir().full_path, name)
    with open(path, "w") as f:
      f.write(text)
    return path

  def test_read_solution_usage_split(self):
    # DELF's dataset_file_io_test layout.
    path = self._file(
      "solution.csv",
      "id,landmarks,Usage\n0123,0 12,Public\n0223,,Public\n0323,100,Ignored\n"
      "0423,1,Private\n0523,,Ignored\n",
    )
    solution = rm.read_solution(path)
    self.assertEqual(solution.public, {"0123": [0, 12], "0223": []})
    self.assertEqual(solution.private, {"0423": [1]})
    self.assertEqual(solution.ignored, ["0323", "0523"])
    self.assertEqual(list(solution.subsets()), ["Public", "Private"])

  def test_read_solution_without_usage(self):
    solution = rm.read_solution(self._file("s.csv", "id,landmarks\na,3\nb,\n"))
    self.assertEqual(solution.subsets(), {"All": {"a": [3], "b": []}})

  def test_malformed_solution_one_line(self):
    for text, pattern in (
      ("id,landmarks,Usage\na,1,Public\nb,2,Secret\n", r"s.csv:3: Usage 'Secret'"),
      ("id,landmarks,Usage\na,x1,Public\n", r"s.csv:2: landmarks 'x1'"),
      ("id,landmarks,Usage\na,1,Public\na,2,Private\n", r"s.csv:3: test image a is repeated"),
      ("id,Usage\na,Public\n", r"s.csv: missing column\(s\) landmarks"),
      ("id,landmarks,Usage\na,1\n", r"s.csv:2: expected 3 fields"),
    ):
      with self.assertRaisesRegex(ValueError, pattern) as caught:
        rm.read_solution(self._file("s.csv", text))
      self.assertNotIn("\n", str(caught.exception))
    with self.assertRaisesRegex(FileNotFoundError, "nope.csv"):
      rm.read_solution("/nonexistent/nope.csv")

  def test_read_predictions(self):
    # DELF's dataset_file_io_test case: trailing space, empty prediction, blank row, ignored id.
    solution = rm.Solution({"0123": [12], "0223": []}, {"0423": [0]}, ["0323", "0523"])
    path = self._file("p.csv", "id,landmarks\n0123,12 0.1 \n0423,0 19.0\n0223,\n\n0523,14 0.01\n")
    public, private = rm.read_predictions(path, solution)
    self.assertEqual(public, {"0123": P(12, 0.1)})
    self.assertEqual(private, {"0423": P(0, 19.0)})

  def test_malformed_predictions_one_line(self):
    solution = rm.Solution({"a": [1], "b": [2]}, {}, [])
    for text, pattern in (
      ("id,landmarks\na,1 0.5 2 0.3\n", r"p.csv:2: prediction for a .* found 4 field"),
      ("id,landmarks\na,1 0.5\na,1 0.5\n", r"p.csv:3: test image a is repeated"),
      ("id,landmarks\nz,1 0.5\n", r"p.csv:2: test image z is not in the solution"),
      ("id,landmarks\nb,x 0.5\n", r"p.csv:2: prediction 'x 0.5'"),
      ("id,landmarks\nb,1 nan\n", r"p.csv:2: score of b is NaN"),
    ):
      with self.assertRaisesRegex(ValueError, pattern) as caught:
        rm.read_predictions(self._file("p.csv", text), solution)
      self.assertNotIn("\n", str(caught.exception))

  def test_submission_round_trip(self):
    path = os.path.join(self.create_tempdir().full_path, "sub.csv")
    predictions = {
      "t2": P(7, float(np.float32(0.1234567))),
      "t1": None,
      "t3": P(123456, 1e-9),
    }
    rm.write_submission(path, predictions)
    with open(path) as f:
      self.assertEqual(f.readline(), "id,landmarks\n")
      self.assertEqual(f.read().splitlines()[1], "t1,")
    solution = rm.Solution({"t1": [], "t2": [7], "t3": [1]}, {}, [])
    public, private = rm.read_predictions(path, solution)
    self.assertEqual(public, {k: v for k, v in predictions.items() if v is not None})
    self.assertEqual(private, {})
    self.assertEqual(os.listdir(os.path.dirname(path)), ["sub.csv"])  # no temporary left


if __name__ == "__main__":
  tf.test.main()
