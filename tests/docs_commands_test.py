"""Every command that README.md and docs/*.md show exists, with the flags shown; links resolve.

The commands are read from the shell code blocks (```bash, ```sh, ```shell,
```console) and from inline code spans that start with a command
(`dolg-...`, `python ...`, `bazel ...`, `make ...`, or a word followed by a
`--flag`). Each is checked without running anything:

- `dolg-*`: a console script in pyproject.toml's [project.scripts];
- `python -m dolg_tf.x.y`: the module's file exists; `python path.py` and
  `bash path`: the file exists;
- `bazel run|build|test //pkg:target`: the target is declared in pkg/BUILD
  (by name, in a list of (name, path) pairs, or by a glob over the package's
  files);
- `make target`: a target of the Makefile;
- any other command word: one of the outside tools the docs may show
  (EXTERNAL_COMMANDS), so a command that does not exist (such as a bare
  `perform_retrieval`) fails;
- `--flag` of a dolg_tf command (after `--` for bazel run): the name appears
  as a string in dolg_tf's sources (absl flag definitions) or in the script
  run, or is a config field name (flags generated from config dataclasses,
  optionally with a prefix that appears as a string, e.g. `gv_`); the Beam
  commands also take Beam's pipeline options.
"""

import ast
import functools
import glob
import importlib.util
import os
import re
import shlex
import tomllib

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
CHECKED_COMMANDS = ("python", "python3", "bazel", "make", "bash")
# Outside tools the docs may show; their arguments are not checked.
EXTERNAL_COMMANDS = frozenset(
  {
    "cd",
    "docker",
    "grep",
    "pip",
    "saved_model_cli",
    "tensorflow_model_server",
  }
)
SEPARATORS = frozenset({"&&", "||", ";", "|"})

_FENCE = re.compile(r"^[ \t]*```([\w-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
_INLINE = re.compile(r"`([^`]+)`")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def doc_paths():
  """README.md and every docs/*.md page."""
  return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


# ----------------------------------------------------------------------------- parsing


def _split_commands(line):
  """The commands of one shell line (comments dropped; split at && || ; |)."""
  try:
    tokens = shlex.split(line, comments=True)
  except ValueError:  # unbalanced quotes: take the words as they are
    tokens = line.split("#", 1)[0].split()
  commands, current = [], []
  for token in tokens:
    if token in SEPARATORS:
      commands.append(current)
      current = []
    else:
      current.append(token)
  commands.append(current)
  return [c for c in commands if c]


def _starts_command(tokens):
  """Whether an inline code span's tokens read as a command line."""
  word = tokens[0]
  if not re.fullmatch(r"[A-Za-z_][\w.-]*", word):
    return False  # `dolg-train: error: ...` (a message), `--flag`, `<name>`, ...
  if word.startswith("dolg-") or word in CHECKED_COMMANDS:
    return True
  return len(tokens) > 1 and tokens[1].startswith("--")


def shell_commands(markdown):
  """The commands (token lists) shown in a Markdown text's shell blocks and code spans."""
  commands = []
  for language, body in _FENCE.findall(markdown):
    if language.lower() not in SHELL_LANGUAGES:
      continue
    for line in re.sub(r"\\\n", " ", body).splitlines():
      commands.extend(_split_commands(line.strip()))
  outside_blocks = _FENCE.sub("", markdown)
  for span in _INLINE.findall(outside_blocks):
    span = " ".join(span.split())
    if not span or span.startswith("-"):
      continue
    for command in _split_commands(span):
      if _starts_command(command):
        commands.append(command)
  return commands


# ----------------------------------------------------------------------------- what exists


@functools.cache
def console_scripts():
  """{script name: 'module:function'} of pyproject.toml."""
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return dict(tomllib.load(f)["project"]["scripts"])


@functools.cache
def make_targets():
  """The Makefile's target names."""
  targets = set()
  for line in _read(os.path.join(ROOT, "Makefile")).splitlines():
    match = re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line)
    if match:
      targets.add(match.group(1))
  return frozenset(targets)


@functools.cache
def bazel_targets(package):
  """The target names BUILD declares in `package` ('' is the root package)."""
  folder = os.path.join(ROOT, package)
  build = os.path.join(folder, "BUILD")
  if not os.path.isfile(build):
    return frozenset()
  text = _read(build)
  names = set(re.findall(r"\bname\s*=\s*\"([^\"]+)\"", text))
  names.update(re.findall(r"\(\s*\"([^\"]+)\"\s*,\s*\"[^\"]+\"\s*\)", text))  # (name, path)
  # `[py_binary(name = src[:-len(".py")], ...) for src in glob(["*_benchmark.py"])]`
  for pattern in re.findall(r"for\s+\w+\s+in\s+glob\(\[\s*\"([^\"]+)\"", text):
    for path in glob.glob(os.path.join(folder, pattern)):
      names.add(os.path.splitext(os.path.basename(path))[0])
  return frozenset(names)


def _python_files(folder):
  for base, _, names in os.walk(folder):
    for name in names:
      if name.endswith(".py") and not name.endswith("_pb2.py"):
        yield os.path.join(base, name)


def _names_in_source(paths):
  """(string constants, annotated class-attribute names) of Python files."""
  strings, fields = set(), set()
  for path in paths:
    tree = ast.parse(_read(path), filename=path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        strings.add(node.value)
      elif isinstance(node, ast.ClassDef):
        for statement in node.body:
          if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            fields.add(statement.target.id)
  return strings, fields


@functools.cache
def dolg_flag_names():
  """Names a dolg_tf command may take as flags (see the module docstring)."""
  strings, fields = _names_in_source(_python_files(os.path.join(ROOT, "dolg_tf")))
  names = {s for s in strings if re.fullmatch(r"[a-z][a-z0-9_]*", s)} | fields
  prefixes = {s for s in strings if re.fullmatch(r"[a-z][a-z0-9]*_", s)}
  names.update(p + f for p in prefixes for f in fields)
  return frozenset(names)


@functools.cache
def script_flag_names(path):
  """String constants of one script (its own flags)."""
  return frozenset(_names_in_source([path])[0])


@functools.cache
def beam_option_names():
  """Beam's pipeline option names, or None when Beam is not installed."""
  spec = importlib.util.find_spec("apache_beam")
  if spec is None or not spec.submodule_search_locations:
    return None
  options = os.path.join(spec.submodule_search_locations[0], "options", "pipeline_options.py")
  return frozenset(re.findall(r"['\"]--([a-z][a-z0-9_]*)['\"]", _read(options)))


# ----------------------------------------------------------------------------- checks


def _flags(tokens):
  """The --names of a token list (values and positional words dropped)."""
  names = []
  for token in tokens:
    if token.startswith("--") and len(token) > 2:
      names.append(token[2:].split("=", 1)[0])
  return names


def _flag_problems(command_text, tokens, extra=frozenset(), beam=False):
  known = dolg_flag_names() | extra
  problems = []
  for name in _flags(tokens):
    if name in known or (name.startswith("no") and name[2:] in known):
      continue
    if beam:
      beam_names = beam_option_names()
      if beam_names is None or name in beam_names:
        continue
    problems.append(f"{command_text}: flag --{name} is defined nowhere in dolg_tf")
  return problems


def _python_problems(text, args):
  if not args:
    return []
  if args[0] == "-m":
    module = args[1] if len(args) > 1 else ""
    if not module.startswith("dolg_tf"):
      return []  # pytest, pip, ...: not a project command
    base = os.path.join(ROOT, *module.split("."))
    if not (os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))):
      return [f"{text}: no module {module} (no {os.path.relpath(base, ROOT)}.py)"]
    return _flag_problems(text, args[2:], script_flag_names(base + ".py"))
  if args[0].startswith("-"):
    return []  # python -c ...
  path = os.path.join(ROOT, args[0])
  if not os.path.isfile(path):
    return [f"{text}: no file {args[0]}"]
  return _flag_problems(text, args[1:], script_flag_names(path))


def _bazel_problems(text, args):
  problems = []
  passed = args.index("--") if "--" in args else len(args)
  for label in args[1:passed]:
    if not label.startswith("//") or label.endswith("..."):
      continue
    package, _, target = label[2:].partition(":")
    target = target or os.path.basename(package)
    if target not in bazel_targets(package):
      problems.append(f"{text}: no Bazel target {label} in {os.path.join(package, 'BUILD')}")
  if args and args[0] == "run":
    problems.extend(_flag_problems(text, args[passed + 1 :]))
  return problems


def command_problems(tokens):
  """What is wrong with one shown command ([] when everything it names exists)."""
  while tokens and _ASSIGNMENT.match(tokens[0]):  # VAR=value command ...
    tokens = tokens[1:]
  if not tokens:
    return []
  text = " ".join(tokens)
  word, args = tokens[0], tokens[1:]
  if word.startswith("dolg-"):
    if word not in console_scripts():
      return [f"{text}: no console script {word} in pyproject.toml [project.scripts]"]
    return _flag_problems(text, args, beam=word.endswith("-beam"))
  if word in ("python", "python3"):
    return _python_problems(text, args)
  if word == "bazel":
    return _bazel_problems(text, args)
  if word == "make":
    names = [a for a in args if not a.startswith("-") and not _ASSIGNMENT.match(a)]
    return [f"{text}: no Makefile target {n}" for n in names if n not in make_targets()]
  if word == "bash":
    missing = args and not os.path.isfile(os.path.join(ROOT, args[0]))
    return [f"{text}: no file {args[0]}"] if missing else []
  if word.endswith(".py"):  # `training_benchmark.py --compare_official` in a sentence
    paths = glob.glob(os.path.join(ROOT, word)) + glob.glob(os.path.join(ROOT, "*", word))
    if not paths:
      return [f"{text}: no script {word} in the repository"]
    return _flag_problems(text, args, script_flag_names(paths[0]))
  if word in EXTERNAL_COMMANDS or word.startswith("$") or "/" in word:
    return []
  return [f"{text}: unknown command {word!r} (not a dolg_tf command nor a known outside tool)"]


def markdown_problems(markdown):
  """Every problem of every command shown in a Markdown text."""
  problems = []
  for tokens in shell_commands(markdown):
    problems.extend(command_problems(tokens))
  return problems


def _heading_anchor(heading):
  """GitHub's anchor of a Markdown heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_problems(path):
  """Relative links of a Markdown file whose file (or heading anchor) does not exist."""
  problems = []
  text = _FENCE.sub("", _read(path))
  for link in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"^[a-z]+:", link):
      continue  # https:, mailto:
    target, _, anchor = link.partition("#")
    target = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
    if not os.path.exists(target):
      problems.append(f"{os.path.relpath(path, ROOT)}: link {link}: no such file")
    elif anchor and target.endswith(".md"):
      headings = re.findall(r"^#+ (.*)$", _read(target), re.M)
      if anchor not in {_heading_anchor(h) for h in headings}:
        problems.append(f"{os.path.relpath(path, ROOT)}: link {link}: no such heading")
  return problems


# ----------------------------------------------------------------------------- tests

_MADE_UP = """
Some text with `perform_retrieval --suffix=.dolg_global` inline.

```bash
dolg-frobnicate --images_dir=x
python -m dolg_tf.no_such_module --output_dir=out
python no_such_script.py
bazel run //dolg_tf:no_such_target -- --logdir=x
make no-such-target
dolg-train --no_such_flag_anywhere=3 --logdir=runs/x   # a comment
```

```python
dolg-not-a-command-in-python-code
```
"""


class DocsCommandsTest(tf.test.TestCase):
  def test_every_shown_command_exists(self):
    for path in doc_paths():
      with self.subTest(path=os.path.relpath(path, ROOT)):
        problems = markdown_problems(_read(path))
        self.assertEqual(problems, [], "\n".join(problems))

  def test_relative_links_resolve(self):
    for path in doc_paths():
      with self.subTest(path=os.path.relpath(path, ROOT)):
        problems = link_problems(path)
        self.assertEqual(problems, [], "\n".join(problems))

  def test_broken_links_fail_by_name(self):
    folder = self.create_tempdir()
    folder.create_file("other.md", "# A heading\n")
    page = folder.create_file(
      "page.md", "[ok](other.md#a-heading) [gone](missing.md) [bad](other.md#nowhere)\n"
    )
    problems = link_problems(page.full_path)
    self.assertLen(problems, 2)
    self.assertIn("link missing.md: no such file", problems[0])
    self.assertIn("link other.md#nowhere: no such heading", problems[1])

  def test_readme_shows_the_two_commands_and_the_design_card_commands(self):
    readme = _read(os.path.join(ROOT, "README.md"))
    shown = [" ".join(c) for c in shell_commands(readme)]
    for command in (
      "make demo",
      "make test",
      "bazel run //dolg_tf:train",
      "python extract_features.py --config=protos/dolg.pbtxt",
    ):
      self.assertIn(command, shown)

  def test_readme_lists_every_console_script(self):
    readme = _read(os.path.join(ROOT, "README.md"))
    for script in console_scripts():
      self.assertIn(f"`{script}`", readme)

  def test_made_up_commands_fail_by_name(self):
    problems = "\n".join(markdown_problems(_MADE_UP))
    for expected in (
      "unknown command 'perform_retrieval'",
      "no console script dolg-frobnicate",
      "no module dolg_tf.no_such_module",
      "no file no_such_script.py",
      "no Bazel target //dolg_tf:no_such_target",
      "no Makefile target no-such-target",
      "flag --no_such_flag_anywhere is defined nowhere",
    ):
      self.assertIn(expected, problems)
    self.assertNotIn("not-a-command-in-python-code", problems)  # python blocks are not shell
    self.assertNotIn("flag --logdir", problems)  # a real flag of dolg-train
    self.assertLen(markdown_problems(_MADE_UP), 7)

  def test_real_commands_pass(self):
    sample = (
      "```bash\n"
      "make demo STACK=current\n"
      "dolg-retrieve --dataset_file_path=g.pkl --gv_max_scale_change=3 \\\n"
      "    --use_geometric_verification\n"
      "cd /anywhere && dolg-demo\n"
      "bazel test //...\n"
      "```\n"
    )
    self.assertEqual(markdown_problems(sample), [])
    self.assertLen(shell_commands(sample), 5)


if __name__ == "__main__":
  tf.test.main()
