#!/usr/bin/env bash
# One idempotent set-up step for dolg_tf on a fresh Debian 12 or 13 machine:
#   0. pick the stack (tools/stack.sh): STACK=card (Python 3.11, TF 2.15.1,
#      requirements.lock, .venv), STACK=current (Python 3.13/3.12, TF 2.20,
#      requirements-current.lock, .venv-current) or STACK=auto (default: card
#      when python3.11 exists, else current);
#   1. apt packages: bazel-bootstrap (Bazel 4.2.3) and protobuf-compiler;
#   2. a virtualenv holding exactly the stack's lock file;
#   3. dolg_tf installed editable (generates dolg_tf/protos/*_pb2.py).
# Each step is skipped when its result is already up to date, so a re-run takes
# seconds. Set DOLG_SKIP_APT=1 to skip step 1 (e.g. on a machine without root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR="$ROOT/.setup-logs"
mkdir -p "$LOG_DIR"

say() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# --- 0. The stack ----------------------------------------------------------------
stack_info="$(bash "$ROOT/tools/stack.sh" "${STACK:-auto}")" || exit 2
stack_field() { sed -n "s/^$1=//p" <<<"$stack_info"; }
STACK_NAME="$(stack_field name)"
PYTHON_FOR_VENV="$(stack_field python)"
LOCK="$ROOT/$(stack_field lock)"
VENV="$(stack_field venv)"
read -r -a BOOTSTRAP <<<"$(stack_field bootstrap)"
say "stack: $STACK_NAME ($(stack_field why)); $(basename "$LOCK") into $VENV"

# apt-get install PACKAGE... as root or with sudo; the log in $LOG_DIR/apt.log.
apt_install() {
  local sudo=""
  if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $*"
    sudo="sudo"
  fi
  say "apt-get install $* (log: $LOG_DIR/apt.log)"
  if ! { $sudo apt-get update -qq && \
         DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"; } >>"$LOG_DIR/apt.log" 2>&1; then
    tail -20 "$LOG_DIR/apt.log" >&2
    die "apt-get install $* failed"
  fi
}

# --- 1. System packages -------------------------------------------------------
if [[ "${DOLG_SKIP_APT:-0}" != "1" ]]; then
  missing=()
  command -v bazel >/dev/null 2>&1 || missing+=(bazel-bootstrap)
  command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
  else
    say "apt packages present (bazel, protoc)"
  fi
fi

# --- 2. Python virtualenv -------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating virtualenv $VENV with $PYTHON_FOR_VENV"
  if ! "$PYTHON_FOR_VENV" -m venv "$VENV" >"$LOG_DIR/venv.log" 2>&1; then
    # Debian's interpreters ship venv (ensurepip) separately.
    rm -rf "$VENV"
    version="$("$PYTHON_FOR_VENV" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [[ "${DOLG_SKIP_APT:-0}" == "1" ]] && die "$PYTHON_FOR_VENV -m venv failed (see $LOG_DIR/venv.log)"
    apt_install "python$version-venv"
    "$PYTHON_FOR_VENV" -m venv "$VENV" || die "$PYTHON_FOR_VENV -m venv failed"
  fi
fi
lock_hash="$(sha256sum "$LOCK" | cut -d' ' -f1)"
stamp="$VENV/.dolg_lock.sha256"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  say "installing $(basename "$LOCK") into $VENV (about 2 minutes; log: $LOG_DIR/pip-$STACK_NAME.log)"
  if ! { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${BOOTSTRAP[@]}" && \
         "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$LOCK" && \
         "$VENV/bin/python" -m pip check; } >"$LOG_DIR/pip-$STACK_NAME.log" 2>&1; then
    grep -v "is ignored: it is neither" "$LOG_DIR/pip-$STACK_NAME.log" | tail -30 >&2
    die "pip install -r $(basename "$LOCK") failed"
  fi
  echo "$lock_hash" >"$stamp"
else
  say "virtualenv up to date ($VENV)"
fi

# --- 2b. Optional PyTorch (checkpoint converter and its parity tests) -----------
# DOLG_SKIP_TORCH=1 skips it; a failure only warns: the converter's tests then
# skip with a visible reason and everything else works without torch. The CPU
# build on this machine kind's disk is for Python 3.11: on the current stack a
# plain `pip install torch` would download a multi-GB CUDA build, so it is skipped.
if [[ "$STACK_NAME" != card ]]; then
  say "optional torch skipped on the current stack (converter tests skip; see requirements-torch.txt)"
elif [[ "${DOLG_SKIP_TORCH:-0}" != "1" ]]; then
  torch_hash="$(sha256sum "$ROOT/requirements-torch.txt" | cut -d' ' -f1)"
  torch_stamp="$VENV/.dolg_torch.sha256"
  if [[ ! -f "$torch_stamp" || "$(cat "$torch_stamp")" != "$torch_hash" ]]; then
    say "installing optional torch (requirements-torch.txt; log: $LOG_DIR/torch.log)"
    if "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
         -r "$ROOT/requirements-torch.txt" >"$LOG_DIR/torch.log" 2>&1 && \
       "$VENV/bin/python" -m pip check >>"$LOG_DIR/torch.log" 2>&1; then
      echo "$torch_hash" >"$torch_stamp"
    else
      say "WARNING: optional torch install failed (see $LOG_DIR/torch.log); converter tests will skip"
    fi
  else
    say "optional torch up to date"
  fi
fi

# --- 3. dolg_tf itself, editable ----------------------------------------------------
# `pip install -e .` runs setup.py's build hook: protos/*.proto -> dolg_tf/protos/*_pb2.py
# and the shipped protos/*.pbtxt copied beside them. Redone when the packaging or a
# proto/config changed; the venv already holds every dependency (--no-deps).
pkg_hash="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/protos/*.proto "$ROOT"/protos/*.pbtxt | sha256sum | cut -d' ' -f1)"
pkg_stamp="$VENV/.dolg_package.sha256"
if [[ ! -f "$pkg_stamp" || "$(cat "$pkg_stamp")" != "$pkg_hash" || ! -f "$ROOT/dolg_tf/protos/datum_pb2.py" ]]; then
  say "pip install -e . (dolg_tf, editable; log: $LOG_DIR/package-$STACK_NAME.log)"
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
       --no-build-isolation -e "$ROOT" >"$LOG_DIR/package-$STACK_NAME.log" 2>&1; then
    tail -30 "$LOG_DIR/package-$STACK_NAME.log" >&2
    die "pip install -e . failed"
  fi
  echo "$pkg_hash" >"$pkg_stamp"
else
  say "dolg_tf package up to date"
fi
say "done. Stack $STACK_NAME, Python: $VENV/bin/python ($("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])'))"
