"""Tests for dolg_tf.data.ground_truth (.pkl and .mat readers, protocols)."""

import os
import pickle
import re

import numpy as np
import tensorflow as tf
from scipy import io as scipy_io

from dolg_tf.data import ground_truth

IMLIST = ["all_souls_000013", "ashmolean_000000", "balliol_000051", "bodleian_000107", "x_1"]
QIMLIST = ["all_souls_000013", "bodleian_000107"]
# 0-based, as in the published pickle.
GND = [
  {"bbx": [136.5, 34.1, 648.5, 955.2], "easy": [0, 2], "hard": [1], "junk": [4]},
  {"bbx": [0.0, 10.0, 20.0, 30.0], "easy": [], "hard": [3], "junk": []},
]


def _write_pkl(path, cfg):
  with open(path, "wb") as f:
    pickle.dump(cfg, f)


def _write_mat(path, imlist, qimlist, gnd, one_based=True):
  """The MATLAB layout: cell arrays of names, 1 x nq struct array, 1-based."""
  shift = 1 if one_based else 0
  struct = np.zeros((1, len(gnd)), dtype=[(f, object) for f in ("easy", "hard", "junk", "bbx")])
  for i, q in enumerate(gnd):
    for field in ("easy", "hard", "junk"):
      values = np.asarray(q[field], dtype=np.float64) + shift
      struct[0, i][field] = values.reshape(1, -1) if values.size else np.zeros((0, 0))
    struct[0, i]["bbx"] = np.asarray(q["bbx"], dtype=np.float64).reshape(1, 4)
  scipy_io.savemat(
    path,
    {
      "imlist": np.array(imlist, dtype=object).reshape(-1, 1),
      "qimlist": np.array(qimlist, dtype=object).reshape(1, -1),
      "gnd": struct,
    },
  )


class GroundTruthTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def test_pkl_and_mat_give_the_same_result(self):
    pkl_path = os.path.join(self.dir, "gnd_roxford5k.pkl")
    mat_path = os.path.join(self.dir, "gnd_roxford5k.mat")
    _write_pkl(pkl_path, {"imlist": IMLIST, "qimlist": QIMLIST, "gnd": GND})
    _write_mat(mat_path, IMLIST, QIMLIST, GND)
    from_pkl = ground_truth.load_ground_truth(pkl_path)
    from_mat = ground_truth.load_ground_truth(mat_path)
    for gt in (from_pkl, from_mat):
      self.assertEqual(gt.dataset, "roxford5k")
      self.assertEqual(gt.imlist, tuple(IMLIST))
      self.assertEqual(gt.qimlist, tuple(QIMLIST))
      self.assertEqual(gt.num_db, 5)
      self.assertEqual(gt.num_queries, 2)
      for q, expected in zip(gt.gnd, GND):
        for field in ("easy", "hard", "junk"):
          self.assertEqual(q[field].dtype, np.int64)
          self.assertAllEqual(q[field], expected[field])
        # bbx is 0-based pixels in both files: copied unchanged.
        self.assertAllClose(q["bbx"], expected["bbx"])

  def test_mat_zero_index_is_rejected(self):
    path = os.path.join(self.dir, "gnd_rparis6k.mat")
    _write_mat(path, IMLIST, QIMLIST, GND, one_based=False)  # contains a 0
    with self.assertRaisesRegex(ValueError, "gnd_rparis6k.mat.*below 1"):
      ground_truth.load_ground_truth(path)

  def test_errors_name_the_file(self):
    missing = os.path.join(self.dir, "gnd_none.pkl")
    with self.assertRaisesRegex(OSError, "gnd_none.pkl"):
      ground_truth.load_ground_truth(missing)
    odd = os.path.join(self.dir, "gnd.txt")
    with open(odd, "w") as f:
      f.write("x")
    with self.assertRaisesRegex(ValueError, "gnd.txt.*format"):
      ground_truth.load_ground_truth(odd)
    no_gnd = os.path.join(self.dir, "no_gnd.pkl")
    _write_pkl(no_gnd, {"imlist": IMLIST, "qimlist": QIMLIST})
    with self.assertRaisesRegex(ValueError, "no_gnd.pkl.*gnd"):
      ground_truth.load_ground_truth(no_gnd)
    out_of_range = os.path.join(self.dir, "range.pkl")
    bad = [dict(GND[0], junk=[5]), GND[1]]
    _write_pkl(out_of_range, {"imlist": IMLIST, "qimlist": QIMLIST, "gnd": bad})
    with self.assertRaisesRegex(ValueError, r"range.pkl.*gnd\[0\]\['junk'\]"):
      ground_truth.load_ground_truth(out_of_range)
    garbage = os.path.join(self.dir, "garbage.pkl")
    with open(garbage, "wb") as f:
      f.write(b"not a pickle")
    with self.assertRaisesRegex(ValueError, "garbage.pkl"):
      ground_truth.load_ground_truth(garbage)
    mismatch = os.path.join(self.dir, "mismatch.pkl")
    _write_pkl(mismatch, {"imlist": IMLIST, "qimlist": QIMLIST[:1], "gnd": GND})
    with self.assertRaisesRegex(ValueError, "mismatch.pkl.*qimlist"):
      ground_truth.load_ground_truth(mismatch)

  def test_truncated_text_and_keyless_files_are_one_line_naming_the_file(self):
    good = os.path.join(self.dir, "gnd_good.pkl")
    _write_pkl(good, {"imlist": IMLIST, "qimlist": QIMLIST, "gnd": GND})
    with open(good, "rb") as f:
      data = f.read()
    mat = os.path.join(self.dir, "gnd_good.mat")
    _write_mat(mat, IMLIST, QIMLIST, GND)
    with open(mat, "rb") as f:
      mat_data = f.read()
    cases = [
      ("truncated.pkl", data[: len(data) // 2], r"not a readable pickle .*truncated"),
      ("empty.pkl", b"", r"truncated or empty pickle"),
      ("text.pkl", b"imlist: a b\nqimlist: q\n", r"not a readable pickle"),
      ("hello.pkl", b"hello", r"not a readable pickle"),
      ("truncated.mat", mat_data[:-10], r"truncated or not a readable \.mat file"),
      ("header.mat", mat_data[:100], r"truncated or not a readable \.mat file"),
      ("empty.mat", b"", r"truncated or not a readable \.mat file"),
      ("text.mat", b"hello world, this is not MATLAB", r"truncated or not a readable \.mat file"),
    ]
    for name, content, message in cases:
      path = os.path.join(self.dir, name)
      with open(path, "wb") as f:
        f.write(content)
      with self.assertRaisesRegex(ValueError, "^" + re.escape(path) + ": " + message, msg=name):
        ground_truth.load_ground_truth(path)
    keyless = os.path.join(self.dir, "keyless.pkl")
    _write_pkl(keyless, {"imlist": IMLIST})
    with self.assertRaisesRegex(
      ValueError, f"^{re.escape(keyless)}: missing key\\(s\\) qimlist, gnd$"
    ):
      ground_truth.load_ground_truth(keyless)
    keyless = os.path.join(self.dir, "keyless.mat")
    scipy_io.savemat(keyless, {"imlist": np.array(IMLIST, dtype=object)})
    with self.assertRaisesRegex(
      ValueError, f"^{re.escape(keyless)}: missing variable\\(s\\) qimlist, gnd$"
    ):
      ground_truth.load_ground_truth(keyless)
    words = os.path.join(self.dir, "words.pkl")
    _write_pkl(words, {"imlist": IMLIST, "qimlist": QIMLIST[:1], "gnd": [dict(GND[0], easy="ab")]})
    with self.assertRaisesRegex(
      ValueError, r"words.pkl: gnd\[0\]\['easy'\] is not a list of indices"
    ):
      ground_truth.load_ground_truth(words)

  def test_protocols(self):
    path = os.path.join(self.dir, "gnd_roxford5k.pkl")
    _write_pkl(path, {"imlist": IMLIST, "qimlist": QIMLIST, "gnd": GND})
    gt = ground_truth.load_ground_truth(path)

    def as_sets(entries):
      return [(set(e["ok"].tolist()), set(e["junk"].tolist())) for e in entries]

    self.assertEqual(
      as_sets(ground_truth.protocol_ground_truth(gt, "easy")),
      [({0, 2}, {4, 1}), (set(), {3})],
    )
    self.assertEqual(
      as_sets(ground_truth.protocol_ground_truth(gt, "Medium")),
      [({0, 2, 1}, {4}), ({3}, set())],
    )
    self.assertEqual(
      as_sets(ground_truth.protocol_ground_truth(gt.gnd, "hard")),
      [({1}, {4, 0, 2}), ({3}, set())],
    )
    with self.assertRaisesRegex(ValueError, "protocol"):
      ground_truth.protocol_ground_truth(gt, "extreme")


if __name__ == "__main__":
  tf.test.main()
