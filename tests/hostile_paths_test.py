"""Hostile ground truth, lists and CSVs (issue 25, slice A).

* A ground-truth pickle never runs code: only containers, strings, numbers
  and numpy arrays load (utils/untrusted.py); real revisitop-format pickles
  still do.
* Entries of lists, ground-truth names and GLDv2 ids that lead outside
  --images_dir are failures.tsv rows, never opened (unless
  --allow_outside_images_dir); GLDv2 ids with '/', '\\' or '..' always are.
* Lists and CSVs are UTF-8 with an optional BOM; other bytes are one error
  naming the file, offset and line.
"""

import concurrent.futures
import io
import os
import pickle
import subprocess
import types

import numpy as np
import tensorflow as tf
from absl.testing import flagsaver, parameterized
from PIL import Image

from dolg_tf.data import dataset_plan, gldv2_files, ground_truth
from dolg_tf.extraction import (
  beam_pipeline,
  extract_features,
  failure_log,
  input_flags,
  pipeline,
  task_sources,
)
from dolg_tf.io import datum_io
from dolg_tf.utils import cli, untrusted
from dolg_tf.visualization import retrieval_report
from tests import testutil

EXTRACT = "dolg_tf.extraction.extract_features"
RETRIEVE = "dolg_tf.retrieval.perform_retrieval"
OUTSIDE_RULE = r"outside the images folder .*--allow_outside_images_dir"


class _Reduce:
  """Pickles as `function(*args)`: what a crafted file asks the unpickler to call."""

  def __init__(self, function, args):
    self.function, self.args = function, args

  def __reduce__(self):
    return self.function, self.args


def _gnd(names_db=("d1", "d2"), names_q=("q1",), arrays=True):
  """A revisitop-format ground truth (numpy arrays as in gnd_roxford5k.pkl, or plain lists)."""

  def index(values):
    return np.asarray(values, dtype=np.int64) if arrays else list(values)

  bbx = np.array([1.0, 2.0, 20.0, 25.0]) if arrays else [1.0, 2.0, 20.0, 25.0]
  query = {"bbx": bbx, "easy": index([0]), "hard": index([1]), "junk": index([]), "ok": index([0])}
  return {"imlist": list(names_db), "qimlist": list(names_q), "gnd": [query] * len(names_q)}


def _py2_str(data: bytes) -> bytes:
  """A Python 2 `str` in a pickle (SHORT_BINSTRING / BINSTRING)."""
  if len(data) < 256:
    return b"U" + bytes([len(data)]) + data
  return b"T" + len(data).to_bytes(4, "little") + data


def _py2_array(values, dtype: str) -> bytes:
  """The pickle opcodes Python 2's numpy 1 writes for a 1-D array (data as a Python 2 str)."""
  data = np.asarray(values, dtype="<" + dtype).tobytes()
  return (
    b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
    + _py2_str(b"b")
    + b"\x87R(K\x01"
    + b"K"
    + bytes([len(values)])
    + b"\x85"
    + b"cnumpy\ndtype\n"
    + _py2_str(dtype.encode())
    + b"K\x00K\x01\x87R"
    + b"(K\x03"
    + _py2_str(b"<")
    + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    + b"\x89"
    + _py2_str(data)
    + b"tb"
  )


def _py2_gnd_pickle() -> bytes:
  """_gnd() as Python 2 pickled it (protocol 2, str names, numpy arrays).

  Opcodes: `}` empty dict, `]` empty list, `(` mark, `e` appends, `u` setitems.
  """
  s = _py2_str
  parts = [
    b"\x80\x02}(",
    s(b"imlist") + b"](" + s(b"d1") + s(b"d2") + b"e",
    s(b"qimlist") + b"](" + s(b"q1") + b"e",
    s(b"gnd") + b"](}(",
    s(b"bbx") + _py2_array([1.0, 2.0, 20.0, 25.0], "f8"),
    s(b"easy") + _py2_array([0], "i8"),
    s(b"hard") + _py2_array([1], "i8"),
    s(b"junk") + b"]",
    b"ue",  # the query dict, the gnd list
    b"u.",  # the top dict
  ]
  return b"".join(parts)


def _write_pickle(path, obj, protocol=2):
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=protocol)
  return path


def _evil(marker):
  """A ground truth whose unpickling would create `marker` (os.system)."""
  return _gnd() | {"imlist": _Reduce(os.system, (f"touch {marker}",))}


def _image(path, size=(40, 30), seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, [size[1], size[0], 3], dtype=np.uint8)
  Image.fromarray(pixels).save(path)


def _failures(output_dir):
  path = os.path.join(output_dir, failure_log.FAILURES_FILE)
  if not os.path.exists(path):
    return {}
  return {row["path"]: row["reason"] for row in failure_log.read_failures(path)}


class _RecordingExtractor:
  """A model-free extractor that records every path it opens."""

  suffix = ".dolg_global"

  def __init__(self):
    self.opened = []

  def load_and_preprocess(self, path, box=None):
    self.opened.append(path)
    with open(path, "rb") as f:
      f.read(1)
    return np.zeros([12, 12, 3], np.float32)

  def extract(self, image):
    return np.ones([4], np.float32) / 2.0


def _workspace(w):
  """images/{q1,d1,d2,sub/s1}.jpg, outside.jpg next to images/, descriptors, configs."""
  images = os.path.join(w, "images")
  for i, name in enumerate(("q1", "d1", "d2", "sub/s1")):
    _image(os.path.join(images, name + ".jpg"), seed=i)
  _image(os.path.join(w, "outside.jpg"), seed=9)
  descriptors = os.path.join(w, "descriptors")
  os.makedirs(descriptors)
  rng = np.random.default_rng(1)
  for name in ("q1", "d1", "d2"):
    vector = rng.normal(size=8).astype(np.float32)
    datum_io.write_to_file(os.path.join(descriptors, name + ".dolg_global"), vector)
  with open(os.path.join(w, "config.pbtxt"), "w") as f:
    f.write(f'model_path: "{testutil.tiny_export("dolg")}"\nimage_scales: 1\n')


class HostileInputsEndToEndTest(tf.test.TestCase):
  """The commands, run as the user runs them (subprocesses, two at a time)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    w = cls.w = os.path.join(tf.compat.v1.test.get_temp_dir(), "hostile_paths")
    _workspace(w)
    _write_pickle(os.path.join(w, "gnd_evil.pkl"), _evil(os.path.join(w, "pwned_retrieve")))
    _write_pickle(os.path.join(w, "gnd_evil2.pkl"), _evil(os.path.join(w, "pwned_extract")))
    _write_pickle(os.path.join(w, "gnd_ok.pkl"), _gnd(), protocol=2)
    with open(os.path.join(w, "list.txt"), "wb") as f:  # BOM before the first entry
      f.write(b"\xef\xbb\xbfq1.jpg\n../outside.jpg\n" + os.path.join(w, "outside.jpg").encode())
      f.write(b"\nsub/../d1.jpg\n")
    with open(os.path.join(w, "latin1.txt"), "wb") as f:
      f.write("q1.jpg\ncaf\xe9.jpg\n".encode("latin1"))
    common = ("--config=config.pbtxt", "--images_dir=images")
    runs = {
      "retrieve_evil": (RETRIEVE, "--dataset_file_path=gnd_evil.pkl")
      + ("--query_features_dir=descriptors", "--index_features_dir=descriptors"),
      "retrieve_ok": (RETRIEVE, "--dataset_file_path=gnd_ok.pkl")
      + ("--query_features_dir=descriptors", "--index_features_dir=descriptors"),
      "extract_evil": (EXTRACT, *common, "--gnd_path=gnd_evil2.pkl", "--output_dir=out_evil"),
      "extract_list": (EXTRACT, *common, "--list_images_path=list.txt", "--output_dir=out_list"),
      "extract_latin1": (
        EXTRACT,
        *common,
        "--list_images_path=latin1.txt",
        "--output_dir=out_latin1",
      ),
    }

    def run(args):
      return testutil.run_module(*args, cwd=w, env=dict(os.environ, PYTHONWARNINGS="ignore"))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      futures = {name: pool.submit(run, args) for name, args in runs.items()}
      cls.results = {name: f.result() for name, f in futures.items()}

  def _error_line(self, name: str, command: str) -> str:
    result: subprocess.CompletedProcess = self.results[name]
    self.assertEqual(result.returncode, 2, result.stderr[-3000:])
    self.assertNotIn("Traceback", result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    self.assertStartsWith(last, f"{command}: error: ")
    return last

  def test_retrieval_refuses_a_pickle_that_runs_code(self):
    line = self._error_line("retrieve_evil", "perform_retrieval")
    self.assertRegex(
      line,
      r"gnd_evil\.pkl: refused to load: the pickle asks for (posix|os|nt)\.system \(only dicts, "
      r"lists, strings, numbers and numpy arrays are accepted\)$",
    )
    self.assertFalse(os.path.exists(os.path.join(self.w, "pwned_retrieve")))

  def test_retrieval_reads_a_real_format_pickle(self):
    result = self.results["retrieve_ok"]
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertNotIn("Traceback", result.stderr)
    self.assertIn("mAP", result.stdout)

  def test_extraction_refuses_a_ground_truth_that_runs_code(self):
    line = self._error_line("extract_evil", "extract_features")
    self.assertRegex(line, r"gnd_evil2\.pkl: refused to load: the pickle asks for \w+\.system")
    self.assertFalse(os.path.exists(os.path.join(self.w, "pwned_extract")))
    self.assertFalse(os.path.exists(os.path.join(self.w, "out_evil")))

  def test_list_entries_outside_images_dir_are_failure_rows(self):
    result = self.results["extract_list"]
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertNotIn("Traceback", result.stderr)
    out = os.path.join(self.w, "out_list")
    # The BOM did not spoil the first entry; a '..' that stays inside is fine.
    self.assertCountEqual(
      [n for n in os.listdir(out) if n.endswith(".dolg_global")],
      ["q1.dolg_global", "d1.dolg_global"],
    )
    failures = _failures(out)
    self.assertCountEqual(
      failures, ["images/../outside.jpg", os.path.join(self.w, "outside.jpg")], failures
    )
    for reason in failures.values():
      self.assertRegex(reason, OUTSIDE_RULE)

  def test_non_utf8_list_is_one_line_naming_file_offset_and_line(self):
    line = self._error_line("extract_latin1", "extract_features")
    self.assertRegex(
      line, r"latin1\.txt: not UTF-8 text: byte b'\\xe9' at offset 10 \(line 2\); save the file"
    )
    self.assertFalse(os.path.exists(os.path.join(self.w, "out_latin1")))


class GroundTruthPickleTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.product(arrays=(True, False), protocol=(0, 2, pickle.HIGHEST_PROTOCOL))
  def test_real_format_pickles_load(self, arrays, protocol):
    path = _write_pickle(
      os.path.join(self.create_tempdir().full_path, "gnd_roxford5k.pkl"),
      _gnd(arrays=arrays),
      protocol,
    )
    gt = ground_truth.load_ground_truth(path)
    self.assertEqual(gt.dataset, "roxford5k")
    self.assertEqual(gt.imlist, ("d1", "d2"))
    self.assertEqual(gt.qimlist, ("q1",))
    self.assertAllEqual(gt.gnd[0]["easy"], [0])
    self.assertAllEqual(gt.gnd[0]["hard"], [1])
    self.assertAllClose(gt.gnd[0]["bbx"], [1.0, 2.0, 20.0, 25.0])

  def test_python2_numpy_pickle_loads(self):
    path = os.path.join(self.create_tempdir().full_path, "gnd_rparis6k.pkl")
    with open(path, "wb") as f:
      f.write(_py2_gnd_pickle())
    gt = ground_truth.load_ground_truth(path)
    self.assertEqual((gt.imlist, gt.qimlist), (("d1", "d2"), ("q1",)))
    self.assertAllEqual(gt.gnd[0]["hard"], [1])
    self.assertAllClose(gt.gnd[0]["bbx"], [1.0, 2.0, 20.0, 25.0])

  def test_numpy_arrays_and_scalars_of_every_kind_load(self):
    data = {
      "f32": np.zeros([2, 3], np.float32),
      "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
      "names": np.array(["all_souls_000013", "radcliffe_camera_000519"]),
      "objects": np.array(["a", None, 3], dtype=object),
      "scalars": [np.float64(1.5), np.int64(-3), np.float32(2.0), np.bool_(True)],
      "bytes": [b"", b"\x00\xff"],
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
      loaded = untrusted.load_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
      self.assertAllEqual(loaded["fortran"], data["fortran"])
      self.assertAllEqual(loaded["names"], data["names"])
      self.assertEqual(list(loaded["objects"]), ["a", None, 3])
      self.assertEqual(loaded["scalars"], data["scalars"])
      self.assertEqual(loaded["bytes"], data["bytes"])

  @parameterized.named_parameters(
    ("os_system", _Reduce(os.system, ("touch {marker}",)), r"\w+\.system"),
    ("eval", _Reduce(eval, ("open({marker!r}, 'w')",)), r"builtins\.eval"),
    ("exec", _Reduce(exec, ("open({marker!r}, 'w')",)), r"builtins\.exec"),
    ("popen", _Reduce(subprocess.Popen, (["touch", "{marker}"],)), r"subprocess\.Popen"),
    ("big_bytes", _Reduce(bytes, (10**12,)), r"bytes with arguments"),
    (
      "big_array",
      _Reduce(np.zeros(0).__reduce__()[0], (np.ndarray, (10**12,), b"b")),
      r"an array of shape",
    ),
    ("ndarray_called", _Reduce(np.ndarray, ((10**6, 10**6),)), r"numpy\.ndarray called directly"),
  )
  def test_crafted_pickles_are_refused_and_run_nothing(self, payload, refused):
    tmp = self.create_tempdir().full_path
    marker = os.path.join(tmp, "marker")
    payload = _Reduce(
      payload.function,
      tuple(
        [a.replace("{marker}", marker) for a in arg]
        if isinstance(arg, list)
        else arg.format(marker=marker)
        if isinstance(arg, str)
        else arg
        for arg in payload.args
      ),
    )
    path = _write_pickle(os.path.join(tmp, "gnd.pkl"), _gnd() | {"gnd": [payload]}, protocol=4)
    with self.assertRaisesRegex(
      ValueError,
      f"^{path}: refused to load: the pickle asks for {refused}.*"
      r"\(only dicts, lists, strings, numbers and numpy arrays are accepted\)$",
    ):
      ground_truth.load_ground_truth(path)
    self.assertFalse(os.path.exists(marker))

  @parameterized.named_parameters(
    ("name_not_a_string", {"imlist": ["d1", ["d2"]]}, r"imlist\[1\] is a list, expected a string"),
    ("name_a_number", {"qimlist": [7]}, r"qimlist\[0\] is a int, expected a string"),
    ("gnd_not_a_list", {"gnd": 3}, r"'gnd' is a int, expected a list"),
    ("index_text", {"gnd": [{"easy": "x", "hard": [], "junk": []}]}, r"gnd\[0\]\['easy'\]"),
  )
  def test_bad_structure_is_one_line_naming_the_field(self, change, message):
    path = os.path.join(self.create_tempdir().full_path, "gnd.pkl")
    _write_pickle(path, _gnd() | change)
    with self.assertRaisesRegex(ValueError, f"^{path}: {message}") as raised:
      ground_truth.load_ground_truth(path)
    self.assertNotIn("\n", str(raised.exception))

  def test_utf8_bytes_names_load_as_text(self):
    path = _write_pickle(
      os.path.join(self.create_tempdir().full_path, "gnd.pkl"),
      _gnd(names_db=(b"d1", b"d2")),
      protocol=3,
    )
    self.assertEqual(ground_truth.load_ground_truth(path).imlist, ("d1", "d2"))


class PathRuleTest(tf.test.TestCase, parameterized.TestCase):
  """Which entries are refused, and that refused files are never opened."""

  def setUp(self):
    super().setUp()
    self.w = self.create_tempdir().full_path
    self.images = os.path.join(self.w, "images")
    for name in ("q1", "d1", "sub/s1"):
      _image(os.path.join(self.images, name + ".jpg"))
    _image(os.path.join(self.w, "outside.jpg"))
    os.symlink(os.path.join(self.w, "outside.jpg"), os.path.join(self.images, "linked.jpg"))
    extract_features.define_flags()
    if not extract_features.FLAGS.is_parsed():
      extract_features.FLAGS.mark_as_parsed()

  def _write(self, name, data: bytes):
    path = os.path.join(self.w, name)
    with open(path, "wb") as f:
      f.write(data)
    return path

  def _extract(self, allow=False, **flag_values):
    """tasks_from_flags + run_extraction with a model-free extractor; (opened, out)."""
    out = os.path.join(self.w, "out")
    with flagsaver.flagsaver(images_dir=self.images, allow_outside_images_dir=allow, **flag_values):
      tasks = input_flags.tasks_from_flags()
    model = _RecordingExtractor()
    pipeline.run_extraction(model, tasks, out, log_interval=1e9)
    return model.opened, out

  @parameterized.named_parameters(
    ("dotdot", "../outside.jpg", True),
    ("dotdot_deep", "sub/../../outside.jpg", True),
    ("dotdot_inside", "sub/../q1.jpg", False),
    ("nested", "sub/s1.jpg", False),
    ("symlink_inside_is_followed", "linked.jpg", False),
    ("without_extension", "../outside", True),
  )
  def test_relative_list_entries(self, entry, refused):
    list_path = self._write("list.txt", f"{entry}\n".encode())
    opened, out = self._extract(list_images_path=list_path)
    failures = _failures(out)
    if refused:
      self.assertEqual(opened, [])
      self.assertLen(failures, 1)
      ((path, reason),) = failures.items()
      self.assertEqual(path, os.path.join(self.images, entry))
      self.assertRegex(reason, "^" + f"{path}: " + OUTSIDE_RULE)
      self.assertEqual([n for n in os.listdir(out) if n.endswith(".dolg_global")], [])
    else:
      self.assertLen(opened, 1)
      self.assertEqual(failures, {})

  def test_absolute_entries_only_inside_images_dir(self):
    inside = os.path.join(self.images, "q1.jpg")
    outside = os.path.join(self.w, "outside.jpg")
    list_path = self._write("list.txt", f"{inside}\n{outside}\n/etc/passwd\n".encode())
    opened, out = self._extract(list_images_path=list_path)
    self.assertEqual(opened, [inside])
    self.assertCountEqual(_failures(out), [outside, "/etc/passwd"])

  def test_allow_outside_images_dir_reads_them(self):
    list_path = self._write("list.txt", b"../outside\n")  # DELF lists: no extension
    opened, out = self._extract(allow=True, list_images_path=list_path)
    self.assertEqual(opened, [os.path.join(self.images, "../outside.jpg")])
    self.assertTrue(os.path.exists(os.path.join(out, "outside.dolg_global")))
    self.assertNotIn(OUTSIDE_RULE[:20], str(_failures(out)))

  def test_without_images_dir_entries_are_paths_as_written(self):
    list_path = self._write("list.txt", f"{os.path.join(self.w, 'outside.jpg')}\n".encode())
    out = os.path.join(self.w, "out")
    with flagsaver.flagsaver(list_images_path=list_path, images_dir=None):
      tasks = input_flags.tasks_from_flags()
    self.assertEqual([t.refused for t in tasks], [""])
    model = _RecordingExtractor()
    pipeline.run_extraction(model, tasks, out, log_interval=1e9)
    self.assertLen(model.opened, 1)

  def test_ground_truth_names_outside_are_failure_rows(self):
    gnd_path = _write_pickle(
      os.path.join(self.w, "gnd.pkl"), _gnd(names_db=("d1", "../outside", "/etc/passwd"))
    )
    opened, out = self._extract(gnd_path=gnd_path, image_set="index")
    self.assertEqual(opened, [os.path.join(self.images, "d1.jpg")])
    failures = _failures(out)
    self.assertCountEqual(
      failures, [os.path.join(self.images, "../outside.jpg"), "/etc/passwd.jpg"]
    )
    for reason in failures.values():
      self.assertRegex(reason, OUTSIDE_RULE)

  def test_gldv2_ids_with_separators_or_dotdot_are_failure_rows(self):
    csv_path = self._write(
      "index.csv", b"\xef\xbb\xbfid,url\nq1,u\n../outside,u\nsub/s1,u\na\\b,u\n..x,u\n"
    )
    opened, out = self._extract(allow=True, gldv2_csv_path=csv_path)  # the flag does not apply
    self.assertEqual(opened, [os.path.join(self.images, "q1.jpg")])
    reasons = list(_failures(out).values())
    self.assertLen(reasons, 4)
    for image_id in ("../outside", "sub/s1", "a\\\\b", "..x"):
      self.assertTrue(any(f"GLDv2 id '{image_id}'" in r for r in reasons), (image_id, reasons))

  def test_beam_plan_reports_refused_tasks_as_failures(self):
    list_path = self._write("list.txt", b"q1.jpg\n../outside.jpg\n")
    with flagsaver.flagsaver(images_dir=self.images, list_images_path=list_path):
      tasks = input_flags.tasks_from_flags()
    config = types.SimpleNamespace(
      use_global_features=True, use_local_features=False, global_descriptor_suffix=".g"
    )
    todo, skipped, refused = beam_pipeline.plan_extraction(config, tasks, self.w)
    self.assertEqual([t.image_id for t in todo], ["q1"])
    self.assertEqual(skipped, 0)
    self.assertEqual([t.path for t in refused], [os.path.join(self.images, "../outside.jpg")])
    self.assertRegex(task_sources.refusal_reason(refused[0]), OUTSIDE_RULE)

  def test_non_utf8_csv_is_one_line_naming_file_offset_and_line(self):
    csv_path = self._write("index.csv", b"id\nq1\n\xffx\n")
    with flagsaver.flagsaver(images_dir=self.images, gldv2_csv_path=csv_path):
      with self.assertRaisesRegex(
        ValueError, f"^{csv_path}: not UTF-8 text: byte b'\\\\xff' at offset 6 \\(line 3\\)"
      ):
        input_flags.tasks_from_flags()

  def test_read_inputs_turns_a_bad_list_into_a_user_error(self):
    list_path = self._write("list.txt", b"\xef\xbb\xbfq1.jpg\n\xc3(\n")
    os.makedirs(os.path.join(self.w, "m"))
    config = self._write("c.pbtxt", f'model_path: "{self.w}/m"\n'.encode())
    with flagsaver.flagsaver(
      config=config,
      output_dir=os.path.join(self.w, "o"),
      list_images_path=list_path,
      images_dir=self.images,
    ):
      with self.assertRaisesRegex(
        cli.UserError, f"^{list_path}: not UTF-8 .* offset 10 \\(line 2\\)"
      ):
        input_flags.read_inputs()


class TextAndDatasetTest(tf.test.TestCase):
  def test_decode_text_drops_a_bom_and_names_the_byte(self):
    self.assertEqual(untrusted.decode_text(b"\xef\xbb\xbfa\nb", "l"), "a\nb")
    with self.assertRaisesRegex(
      ValueError, r"^l: not UTF-8 text: byte b'\\xff' at offset 7 \(line 2\)"
    ):
      untrusted.decode_text(b"\xef\xbb\xbfab\nc\xff", "l")

  def test_utf8_lines_streams_with_offsets(self):
    self.assertEqual(
      list(untrusted.utf8_lines(io.BytesIO(b"\xef\xbb\xbfa\r\nb"), "l")), ["a\r\n", "b"]
    )
    with self.assertRaisesRegex(
      ValueError, r"^l: not UTF-8 text: byte b'\\xfe' at offset 4 \(line 3\)"
    ):
      list(untrusted.utf8_lines(io.BytesIO(b"a\nb\n\xfe\n"), "l"))

  def test_is_inside_is_lexical(self):
    self.assertTrue(untrusted.is_inside("/data/img/a/../b.jpg", "/data/img/"))
    self.assertFalse(untrusted.is_inside("/data/img/../imgs/b.jpg", "/data/img"))
    self.assertFalse(untrusted.is_inside("/data/img2/b.jpg", "/data/img"))
    self.assertTrue(untrusted.is_inside("/anything", "/"))

  def test_malformed_csv_row_names_file_and_line(self):
    path = os.path.join(self.create_tempdir().full_path, "index.csv")
    with open(path, "w") as f:
      f.write("id,url\nabc,x\n" + "d" * 200_000 + ",y\n")
    with self.assertRaisesRegex(ValueError, rf"^{path}:3: malformed CSV \(field larger"):
      task_sources.read_csv_image_ids(path)
    with open(path, "w") as f:
      f.write("id,landmark_id\nabc,1\n" + "d" * 200_000 + ",2\n")
    with self.assertRaisesRegex(ValueError, rf"^{path}:3: malformed CSV"):
      gldv2_files.read_train_csv(path)

  def test_report_refuses_ground_truth_names_outside_images_dir(self):
    self.assertEqual(
      retrieval_report.gnd_image_path("/data/img", "all_souls_1"), "/data/img/all_souls_1.jpg"
    )
    for name in ("../secret", "/etc/passwd", "a/../../b"):
      with self.assertRaisesRegex(ValueError, "resolves outside the images folder /data/img"):
        retrieval_report.gnd_image_path("/data/img", name)

  def test_dataset_builder_skips_and_counts_bad_ids_and_reads_a_bom(self):
    w = self.create_tempdir().full_path
    train = os.path.join(w, "train")
    _image(os.path.join(train, "a", "b", "c", "abc1.jpg"))
    _image(os.path.join(w, "evil.jpg"))
    csv_path = os.path.join(w, "train.csv")
    with open(csv_path, "wb") as f:
      f.write(b"\xef\xbb\xbfid,url,landmark_id\nabc1,u,1\n../evil,u,1\na/b/c/abc1,u,2\n")
    plan = dataset_plan.plan_dataset(train, train_csv_path=csv_path, validation_split_size=0)
    self.assertEqual(plan.num_listed, 3)
    self.assertEqual(
      [r.path for r in plan.splits["train"]], [os.path.join(train, "a/b/c/abc1.jpg")]
    )
    reasons = {m.image_id: m.reason for m in plan.missing}
    self.assertCountEqual(reasons, ["../evil", "a/b/c/abc1"])
    for reason in reasons.values():
      self.assertIn("contains '/', '\\' or '..'", reason)
    self.assertIsNone(gldv2_files.find_image(train, "../evil"))

  def test_dataset_builder_non_utf8_csv_names_file_and_line(self):
    w = self.create_tempdir().full_path
    csv_path = os.path.join(w, "train.csv")
    with open(csv_path, "wb") as f:
      f.write(b"id,url,landmark_id\nabc1,u,1\nab\xe9,u,1\n")
    with self.assertRaisesRegex(
      ValueError, f"^{csv_path}: not UTF-8 text: .* offset 30 \\(line 3\\)"
    ):
      gldv2_files.read_train_csv(csv_path)


if __name__ == "__main__":
  tf.test.main()
