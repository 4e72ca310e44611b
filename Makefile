# dolg_tf developer entry points. Every target runs the idempotent set-up first.
#
# STACK picks the stack (tools/stack.sh): auto (default: the design card's stack when
# python3.11 exists, else the current one), card (Python 3.11, TF 2.15.1, .venv) or
# current (Python 3.13/3.12, TF 2.20, .venv-current). `make ci` tests both.
# RUNNER picks the test runner of `make test`: pytest (default) or bazel.
STACK ?= auto
export STACK
VENV := $(shell bash tools/stack.sh $(STACK) venv 2>/dev/null || echo .venv-unknown)
PY := $(VENV)/bin/python

.PHONY: setup demo test lint pytest bazel-build bazel-test cross-stack ci lock clean

setup:
	bash tools/setup.sh

# The README's main job on the built-in sample data.
demo: setup
	$(PY) -m dolg_tf.demo

# The README's test command: linter, the whole test suite, and the Bazel build
# (BUILD files, offline toolchain, proto genrules). RUNNER picks the suite's
# runner: pytest (default: one process, then `bazel build //...`) or bazel
# (`bazel test //...`: one absltest process per test file, as `python
# tests/x_test.py` runs it; it builds every target too). CI runs the design
# card's stack with RUNNER=bazel and the current one with pytest, so a test
# that only one runner gets right fails CI.
RUNNER ?= pytest
ifeq ($(RUNNER),pytest)
SUITE := pytest bazel-build
else ifeq ($(RUNNER),bazel)
SUITE := bazel-test
else
$(error RUNNER is pytest or bazel, not '$(RUNNER)')
endif

test: setup lint $(SUITE)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest:
	$(PY) -m pytest -q --durations=25 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bazel-build:
	PYTHON_BIN_PATH=$(PY) bazel build //...

bazel-test: setup
	PYTHON_BIN_PATH=$(PY) bazel test //...

# SavedModels and checkpoints across the two stacks (sets both up first).
cross-stack:
	STACK=card bash tools/setup.sh
	STACK=current bash tools/setup.sh
	DOLG_CARD_PYTHON=$$(bash tools/stack.sh card venv)/bin/python \
	DOLG_CURRENT_PYTHON=$$(bash tools/stack.sh current venv)/bin/python \
	  $$(bash tools/stack.sh current venv)/bin/python -m pytest -q -s tests/cross_stack_test.py

# What CI runs: the whole suite on both stacks (side by side), then the cross-stack checks.
ci:
	bash .ci/run

# Regenerate the stack's lock file from its requirements in a throw-away venv.
lock:
	rm -rf /tmp/dolg_lock_venv && $$(bash tools/stack.sh $(STACK) python) -m venv /tmp/dolg_lock_venv
	req=$$(bash tools/stack.sh $(STACK) requirements); \
	/tmp/dolg_lock_venv/bin/pip install -q $$(bash tools/stack.sh $(STACK) bootstrap) && \
	/tmp/dolg_lock_venv/bin/pip install -q -r $$req && \
	{ echo "# Complete pinned environment for dolg_tf (pip freeze of $$req in a fresh"; \
	  echo "# $$(/tmp/dolg_lock_venv/bin/python -V) venv). The set-up step installs exactly this. Regenerate: make lock STACK=$$(bash tools/stack.sh $(STACK) name)"; \
	  /tmp/dolg_lock_venv/bin/pip freeze; } > $$(bash tools/stack.sh $(STACK) lock)

clean:
	rm -rf .setup-logs protos/*_pb2.py
	-bazel clean
