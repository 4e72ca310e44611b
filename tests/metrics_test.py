"""Tests for dolg_tf.retrieval.metrics (revisited protocol and GLDv2 mAP@100)."""

import os

import numpy as np
import tensorflow as tf

from dolg_tf.data import ground_truth
from dolg_tf.retrieval import metrics


def _reference(ranking, ok, junk, kappas):
  """Independent re-derivation: delete junk from the list, then walk it.

  AP: each hit adds a trapezoid of width 1/len(ok) whose sides are the
  precision just before the hit (1 for the first list entry) and at the hit.
  P@k (revisitop convention): cut-off = min(k, 1-based position of the last
  positive); P@k = positives within the cut-off / cut-off.
  """
  ok, junk = set(int(x) for x in ok), set(int(x) for x in junk)
  kept = [int(x) for x in ranking if int(x) not in junk]
  hits, ap, hit_positions = 0, 0.0, []
  for rank, image in enumerate(kept):
    if image in ok:
      before = hits / rank if rank else 1.0
      hits += 1
      ap += 0.5 * (before + hits / (rank + 1)) / len(ok)
      hit_positions.append(rank + 1)
  prs = []
  for k in kappas:
    if not hit_positions:
      prs.append(0.0)
      continue
    cutoff = min(k, hit_positions[-1])
    prs.append(sum(1 for p in hit_positions if p <= cutoff) / cutoff)
  return ap, prs


class RevisitedMetricsTest(tf.test.TestCase):
  def test_hand_computed_ap_and_precision(self):
    # Database ids 0..5; ranking 3, 0, 5, 1, 4, 2; positives {1, 2, 3}, junk {5}.
    # Junk removed: 3, 0, 1, 4, 2 -> positives at 0-based positions 0, 2, 4.
    # Trapezoids (recall step 1/3):
    #   hit 1 at 0: (1 + 1/1) / 2 = 1
    #   hit 2 at 2: (1/2 + 2/3) / 2 = 7/12
    #   hit 3 at 4: (2/4 + 3/5) / 2 = 11/20
    # AP = (1 + 7/12 + 11/20) / 3 = (128/60) / 3 = 32/45 = 0.7111...
    # P@k: 1-based positions 1, 3, 5; last = 5.
    #   P@1 = 1/1; P@5 = 3/5; P@10 -> cut-off min(10, 5) = 5 -> 3/5.
    ranks = np.array([[3, 0, 5, 1, 4, 2]])
    gnd = [{"ok": np.array([1, 2, 3]), "junk": np.array([5])}]
    result = metrics.compute_map(ranks, gnd)
    self.assertAllClose(result.aps, [32.0 / 45.0])
    self.assertAllClose(result.mean_ap, 32.0 / 45.0)
    self.assertAllClose(result.precision_at_k, [[1.0, 0.6, 0.6]])
    self.assertEqual(result.kappas, (1, 5, 10))
    self.assertEqual(result.num_skipped, 0)

  def test_protocols_hand_computed(self):
    # Images: 0 = easy, 1 = easy, 2 = hard, 3 = hard, 4 = junk, 5 = negative.
    # Ranking: hard2, easy0, neg5, junk4, easy1, hard3.
    # Easy (ok 0,1; junk 4,2,3): 0, 5, 1 -> hits at 0, 2:
    #   (1 + (1/2 + 2/3)/2) / 2 = (1 + 7/12) / 2 = 19/24.
    # Medium (ok 0..3; junk 4): 2, 0, 5, 1, 3 -> hits at 0, 1, 3, 4:
    #   (1 + 1 + (2/3 + 3/4)/2 + (3/4 + 4/5)/2) / 4 = (2 + 17/24 + 31/40) / 4 = 209/240.
    # Hard (ok 2,3; junk 4,0,1): 2, 5, 3 -> hits at 0, 2 -> 19/24.
    gt = [{"easy": [0, 1], "hard": [2, 3], "junk": [4], "bbx": None}]
    ranks = np.array([[2, 0, 5, 4, 1, 3]])
    results = metrics.evaluate_revisited(ranks, gt)
    self.assertAllClose(results["easy"].mean_ap, 19.0 / 24.0)
    self.assertAllClose(results["medium"].mean_ap, 209.0 / 240.0)
    self.assertAllClose(results["hard"].mean_ap, 19.0 / 24.0)
    # Medium P@k: positions 1, 2, 4, 5 -> P@1 = 1, P@5 = 4/5, P@10 (cut 5) = 4/5.
    self.assertAllClose(results["medium"].precision_at_k, [[1.0, 0.8, 0.8]])

  def test_query_without_positives_is_skipped(self):
    ranks = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    gnd = [{"ok": np.array([], dtype=np.int64), "junk": np.array([1])}, {"ok": np.array([2])}]
    result = metrics.compute_map(ranks, gnd)
    self.assertEqual(result.num_skipped, 1)
    self.assertTrue(np.isnan(result.aps[0]))
    self.assertTrue(np.all(np.isnan(result.precision_at_k[0])))
    # Only query 1 counts: single positive at 0-based rank 1 -> (0/1 + 1/2) / 2.
    self.assertAllClose(result.mean_ap, 0.25)
    # P@1: cut-off min(1, 2) = 1, no positive within -> 0; P@5, P@10: cut 2 -> 1/2.
    self.assertAllClose(result.mean_precision_at_k, [0.0, 0.5, 0.5])

  def test_all_queries_skipped_gives_nan(self):
    result = metrics.compute_map(np.array([[0, 1]]), [{"ok": np.array([], dtype=np.int64)}])
    self.assertTrue(np.isnan(result.mean_ap))
    self.assertEqual(result.num_skipped, 1)

  def test_single_positive_at_rank_zero(self):
    result = metrics.compute_map(np.array([[4, 0, 1, 2, 3]]), [{"ok": np.array([4])}])
    self.assertAllClose(result.aps, [1.0])
    # Cut-off is clipped to position 1 of the only positive: P@5 = P@10 = 1.
    self.assertAllClose(result.precision_at_k, [[1.0, 1.0, 1.0]])

  def test_junk_before_positives(self):
    # Two junk images first, then positive, negative, positive.
    ranks = np.array([[7, 8, 1, 0, 2, 3]])
    gnd = [{"ok": np.array([1, 2]), "junk": np.array([7, 8])}]
    result = metrics.compute_map(ranks, gnd)
    # Junk-free: 1, 0, 2, 3 -> hits at 0 and 2 -> (1 + (1/2 + 2/3)/2) / 2 = 19/24.
    self.assertAllClose(result.aps, [19.0 / 24.0])
    self.assertAllClose(result.precision_at_k, [[1.0, 2.0 / 3.0, 2.0 / 3.0]])
    # Without the junk declaration the same ranking scores lower.
    plain = metrics.compute_map(ranks, [{"ok": np.array([1, 2])}])
    self.assertLess(plain.mean_ap, result.mean_ap)

  def test_precision_recall_curve_removes_junk(self):
    # Same ranking as above: junk-free 1, 0, 2, 3 -> hits at positions 0 and 2; a third
    # positive (9) is never retrieved, so recall stops at 2/3.
    recall, precision = metrics.precision_recall([7, 8, 1, 0, 2, 3], [1, 2, 9], [7, 8])
    self.assertAllClose(recall, [0.0, 1.0 / 3.0, 2.0 / 3.0])
    self.assertAllClose(precision, [1.0, 1.0, 2.0 / 3.0])
    self.assertAllEqual(metrics.positive_positions([7, 8, 1, 0, 2, 3], [1, 2], [7, 8]), [0, 2])
    with self.assertRaisesRegex(ValueError, "at least one positive"):
      metrics.precision_recall([0, 1], [])

  def test_truncated_ranking_missing_positives(self):
    # Positive 9 is absent from the ranking: it still counts in the recall step.
    ranks = np.array([[1, 0, 2], [0, 2, 3]])
    gnd = [{"ok": np.array([1, 9])}, {"ok": np.array([9])}]
    result = metrics.compute_map(ranks, gnd)
    self.assertAllClose(result.aps, [0.5, 0.0])
    self.assertAllClose(result.precision_at_k, [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])

  def test_matches_reference_on_random_rankings(self):
    rng = np.random.default_rng(7)
    num_db, num_queries = 60, 25
    gt = []
    for q in range(num_queries):
      labels = rng.choice(4, size=num_db, p=[0.75, 0.1, 0.08, 0.07])  # neg/easy/hard/junk
      if q % 6 == 0:
        labels[labels == 1] = 0  # Some queries lack easy images.
      gt.append(
        {
          "easy": np.flatnonzero(labels == 1),
          "hard": np.flatnonzero(labels == 2),
          "junk": np.flatnonzero(labels == 3),
          "bbx": None,
        }
      )
    ranks = np.stack([rng.permutation(num_db) for _ in range(num_queries)])
    kappas = (1, 5, 10)
    results = metrics.evaluate_revisited(ranks, gt, kappas)
    for protocol, result in results.items():
      per_query = ground_truth.protocol_ground_truth(gt, protocol)
      expected_aps, expected_prs = [], []
      for q, entry in enumerate(per_query):
        if entry["ok"].size == 0:
          self.assertTrue(np.isnan(result.aps[q]))
          continue
        ap, prs = _reference(ranks[q], entry["ok"], entry["junk"], kappas)
        self.assertAllClose(result.aps[q], ap, msg=f"{protocol} query {q}")
        self.assertAllClose(result.precision_at_k[q], prs, msg=f"{protocol} query {q}")
        expected_aps.append(ap)
        expected_prs.append(prs)
      self.assertEqual(result.num_skipped, num_queries - len(expected_aps))
      self.assertAllClose(result.mean_ap, np.mean(expected_aps))
      self.assertAllClose(result.mean_precision_at_k, np.mean(expected_prs, axis=0))
    self.assertGreater(results["easy"].num_skipped, 0)

  def test_perfect_ranking_scores_one(self):
    gt = [{"easy": [3, 1], "hard": [0], "junk": [2], "bbx": None}]
    # Medium positives first, then junk, then negatives.
    results = metrics.evaluate_revisited(np.array([[1, 3, 0, 2, 4, 5]]), gt)
    self.assertAllClose(results["medium"].mean_ap, 1.0)
    self.assertAllClose(results["medium"].mean_precision_at_k, [1.0, 1.0, 1.0])

  def test_ranks_from_scores_and_bad_shapes(self):
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.3]])
    self.assertAllEqual(metrics.ranks_from_scores(scores), [[1, 2, 0], [0, 2, 1]])
    with self.assertRaisesRegex(ValueError, "num_queries"):
      metrics.compute_map(np.zeros((3, 2), dtype=np.int64), [{"ok": [0]}])
    with self.assertRaisesRegex(ValueError, "integer"):
      metrics.compute_map(np.zeros((1, 2)), [{"ok": [0]}])

  def test_format_summary(self):
    gt = [{"easy": [0], "hard": [1], "junk": [], "bbx": None}]
    results = metrics.evaluate_revisited(np.array([[0, 2, 1]]), gt)
    text = metrics.format_summary("roxford5k", results)
    lines = text.splitlines()
    self.assertLen(lines, 2)
    # E: 1.0; M: hits at 0, 2 -> (1 + 7/12)/2 = 79.17%; H (junk 0): hit at 1 -> 25%.
    self.assertEqual(lines[0], ">> roxford5k: mAP E: 100.00, M: 79.17, H: 25.00")
    self.assertTrue(lines[1].startswith(">> roxford5k: mP@k[1 5 10] E: [100.00 100.00 100.00]"))


class Gldv2MetricsTest(tf.test.TestCase):
  def test_map_at_k_hand_computed(self):
    solution = {"q1": ["a", "b"], "q2": ["c"], "q3": ["d", "e", "f"]}
    predictions = {
      # Hits at ranks 1 and 3: (1/1 + 2/3) / 2 = 5/6.
      "q1": ["a", "x", "b"],
      # Duplicate 'x' is counted once but uses rank 2; hit at rank 3: (1/3) / 1.
      "q2": ["x", "x", "c"],
      # q3 missing -> 0. 'extra' query is not in the solution -> ignored.
      "extra": ["a"],
    }
    self.assertAllClose(metrics.gldv2_map_at_k(predictions, solution), (5 / 6 + 1 / 3 + 0) / 3)

  def test_map_at_k_cutoff_and_ignored(self):
    solution = {"q": ["a", "b", "c"], "empty": []}
    predictions = {"q": ["x", "a", "b", "c"], "empty": ["a"]}
    # k = 2: only 'a' at rank 2 counts -> (1/2) / min(3, 2) = 1/4. 'empty' ignored.
    self.assertAllClose(metrics.gldv2_map_at_k(predictions, solution, k=2), 0.25)
    self.assertTrue(np.isnan(metrics.gldv2_map_at_k({}, {"empty": []})))

  def test_csv_readers(self):
    tmp = self.create_tempdir()
    sol = tmp.create_file(
      "solution.csv",
      "id,images,Usage\nq1,a b,Public\nq2,c,Private\nq3,None,Ignored\nq4,d,Ignored\n",
    )
    pred = tmp.create_file("pred.csv", "id,images\nq1,b a x\nq2,\nq3,a\n")
    solution = metrics.read_gldv2_retrieval_solution(sol.full_path)
    self.assertEqual(solution, {"q1": ["a", "b"], "q2": ["c"]})
    public = metrics.read_gldv2_retrieval_solution(sol.full_path, usages=("Public",))
    self.assertEqual(public, {"q1": ["a", "b"]})
    predictions = metrics.read_gldv2_predictions(pred.full_path)
    self.assertEqual(predictions, {"q1": ["b", "a", "x"], "q2": [], "q3": ["a"]})
    # q1: hits at 1, 2 -> 1; q2: none -> 0.
    self.assertAllClose(metrics.gldv2_map_at_k(predictions, solution), 0.5)

  def test_csv_errors_name_the_file(self):
    tmp = self.create_tempdir()
    bad = tmp.create_file("bad.csv", "id,imgs\nq1,a\n")
    with self.assertRaisesRegex(ValueError, "bad.csv.*images"):
      metrics.read_gldv2_predictions(bad.full_path)
    dup = tmp.create_file("dup.csv", "id,images\nq1,a\nq1,b\n")
    with self.assertRaisesRegex(ValueError, "dup.csv.*q1"):
      metrics.read_gldv2_predictions(dup.full_path)
    missing = os.path.join(tmp.full_path, "none.csv")
    with self.assertRaisesRegex(OSError, "none.csv"):
      metrics.read_gldv2_retrieval_solution(missing)


if __name__ == "__main__":
  tf.test.main()
