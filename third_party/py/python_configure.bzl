"""Registers the project's virtualenv Python as Bazel's Python toolchain.

The interpreter is `$PYTHON_BIN_PATH` if set, else `<workspace>/.venv/bin/python`.
Bazel 4 ignores `--python_path` once toolchains are enabled, so this repository
rule writes a `py_runtime_pair` toolchain pointing at that interpreter and
fails early, with the set-up command in the message, when it is missing or
cannot import TensorFlow.
"""

_SETUP_HINT = "Run `make setup` (or `bash tools/setup.sh`) in the repository root first."

def _python_configure_impl(ctx):
    python = ctx.os.environ.get("PYTHON_BIN_PATH", "")
    if not python:
        workspace_root = ctx.path(ctx.attr.workspace_marker).dirname
        python = str(workspace_root) + "/.venv/bin/python"
    if not ctx.path(python).exists:
        fail("dolg_tf: Python interpreter %s not found. %s" % (python, _SETUP_HINT))
    probe = ctx.execute([python, "-c", "import tensorflow, sys; print(sys.version_info[0])"], timeout = 300)
    if probe.return_code != 0:
        fail("dolg_tf: %s cannot import tensorflow:\n%s\n%s" % (python, probe.stderr[-2000:], _SETUP_HINT))
    ctx.file("BUILD", """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(python = python))

python_configure = repository_rule(
    implementation = _python_configure_impl,
    attrs = {"workspace_marker": attr.label(default = "//:WORKSPACE")},
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)
