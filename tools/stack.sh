#!/usr/bin/env bash
# Which of dolg_tf's two supported stacks to set up, and where it lives.
#
#   bash tools/stack.sh [STACK] [FIELD]
#
# STACK: card     the design card's stack: Python 3.11, TensorFlow 2.15.1 (requirements.lock)
#        current  Python 3.13 or 3.12, TensorFlow 2.20 (requirements-current.lock)
#        auto     (default) card when python3.11 is on PATH, else current with the newest of
#                 python3.13 / python3.12 found
# FIELD: name | python | requirements | lock | bootstrap | venv | why (default: all of them,
#        one `key=value` a line). bootstrap: what pip installs into a new venv before the lock.
#
# $PYTHON_FOR_VENV overrides the interpreter and $DOLG_VENV the virtualenv folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stack="${1:-auto}"
field="${2:-}"
[[ -z "$stack" ]] && stack=auto

has_python() { command -v "$1" >/dev/null 2>&1 && "$1" -c "" >/dev/null 2>&1; }

# python3.X on PATH, else one that pyenv has installed but not activated (its shim
# then refuses to run it).
find_python() {
  local version="$1" candidate
  if has_python "python$version"; then
    command -v "python$version"
    return 0
  fi
  if command -v pyenv >/dev/null 2>&1; then
    for candidate in $(ls -d "$(pyenv root)"/versions/"$version".*/bin/"python$version" 2>/dev/null | sort -V -r); do
      if has_python "$candidate"; then
        echo "$candidate"
        return 0
      fi
    done
  fi
  return 1
}

newest_current_python() { find_python 3.13 || find_python 3.12; }

case "$stack" in
  auto)
    if find_python 3.11 >/dev/null; then
      stack=card
      why="python3.11 found: the design card's stack (STACK=current picks TF 2.20 instead)"
    elif python="$(newest_current_python)"; then
      stack=current
      why="no python3.11: the current stack on the newest supported Python found ($python)"
    else
      echo "tools/stack.sh: error: no supported Python found (python3.11, python3.12 or python3.13)" >&2
      exit 2
    fi
    ;;
  card) why="STACK=card" ;;
  current) why="STACK=current" ;;
  *)
    echo "tools/stack.sh: error: STACK must be auto, card or current, not '$stack'" >&2
    exit 2
    ;;
esac

if [[ "$stack" == card ]]; then
  find_stack_python() { find_python 3.11; }
  wanted="python3.11"
  requirements="requirements.txt"
  lock="requirements.lock"
  # setuptools >= 77 reads pyproject's SPDX license; this lock (a pip freeze) pins none.
  bootstrap="pip==24.0 setuptools==80.10.2"
  venv="${DOLG_VENV:-$ROOT/.venv}"
else
  find_stack_python() { newest_current_python; }
  wanted="python3.13 or python3.12"
  requirements="requirements-current.txt"
  lock="requirements-current.lock"  # pins setuptools 84.2.1
  bootstrap="pip==25.3"
  venv="${DOLG_VENV:-$ROOT/.venv-current}"
fi
if [[ -n "${PYTHON_FOR_VENV:-}" ]]; then
  python="$PYTHON_FOR_VENV"
elif ! python="$(find_stack_python)"; then
  echo "tools/stack.sh: error: STACK=$stack needs $wanted (on PATH, or installed by pyenv)" >&2
  exit 2
fi

name="$stack"
fields=(name python requirements lock bootstrap venv why)
if [[ -z "$field" ]]; then
  for f in "${fields[@]}"; do echo "$f=${!f}"; done
elif [[ " ${fields[*]} " == *" $field "* ]]; then
  echo "${!field}"
else
  echo "tools/stack.sh: error: unknown field '$field'" >&2
  exit 2
fi
