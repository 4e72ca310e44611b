# dolg_tf developer entry points. Every target runs the idempotent set-up first.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint pytest bazel-build bazel-test lock clean

setup:
	bash tools/setup.sh

# The README's main job on the built-in sample data.
demo: setup
	$(PY) -m dolg_tf.demo

# The README's test command: linter, the whole test suite, and the Bazel build
# (BUILD files, offline toolchain, proto genrules). `make bazel-test` runs the
# same tests under Bazel.
test: setup lint pytest bazel-build

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest:
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bazel-build:
	bazel build //...

bazel-test: setup
	bazel test //...

# Regenerate the lock file from requirements.txt in a throw-away venv.
lock:
	rm -rf /tmp/dolg_lock_venv && python3.11 -m venv /tmp/dolg_lock_venv
	/tmp/dolg_lock_venv/bin/pip install -q pip==24.0 && /tmp/dolg_lock_venv/bin/pip install -q -r requirements.txt
	{ echo "# Complete pinned environment for dolg_tf (pip freeze of requirements.txt in a fresh"; \
	  echo "# Python 3.11 venv). The set-up step installs exactly this. Regenerate: make lock"; \
	  /tmp/dolg_lock_venv/bin/pip freeze; } > requirements.lock

clean:
	rm -rf .setup-logs protos/*_pb2.py
	-bazel clean
