"""`--help` of a dolg_tf command: its own doc and flags on stdout, exit status 0.

absl's `--help` shows the docstring and key flags of the `__main__` module and
exits with status 1. A console script's `__main__` is pip's wrapper (no doc,
no flags), so `dolg-demo --help` showed a bare usage line. `cli.run` calls
`exit_if_help_asked` first instead: the command's flags (those of dolg_tf's
modules, wherever they are defined: at import time, in `define_flags()` or by
`cli.define_config_flags`, plus those of the program file itself) become key
flags of the program (`sys.argv[0]`, where absl looks for them), and
`--help` / `-?` / `--helpshort` print the doc of the module that defines the
command's `main` and these flags; `--helpfull` adds every other flag
(absl's, TensorFlow's).
"""

import sys
import types

from absl import flags

# The package whose modules define the commands' flags.
PACKAGE = "dolg_tf"


def requested_help(argv: list[str]) -> str | None:
  """'short' for --help / -? / --helpshort, 'full' for --helpfull, else None.

  absl's own parser reads `argv` (flag files, `--help=false`, a `--` that
  ends the flags), with the command's other flags left alone.
  """
  probe = flags.FlagValues()
  flags.DEFINE_bool("help", False, "", short_name="?", flag_values=probe)
  flags.DEFINE_bool("helpshort", False, "", flag_values=probe)
  flags.DEFINE_bool("helpfull", False, "", flag_values=probe)
  try:
    probe(list(argv), known_only=True)
  except flags.Error:
    return None  # absl's parse reports the bad argument.
  if probe.helpfull:
    return "full"
  if probe.help or probe.helpshort:
    return "short"
  return None


def _is_command_module(module_name: str, program: str) -> bool:
  return module_name == program or module_name == PACKAGE or module_name.startswith(PACKAGE + ".")


def adopt_command_flags(flag_values: flags.FlagValues = flags.FLAGS) -> list[flags.Flag]:
  """Declares the command's flags as key flags of the program (`sys.argv[0]`); returns them.

  Every flag a dolg_tf module (or the program file) defined in this process
  belongs to the running command: each command defines only its own.
  """
  program = sys.argv[0]
  adopted = []
  for module_name, module_flags in flag_values.flags_by_module_dict().items():
    if _is_command_module(module_name, program):
      for flag in module_flags:
        flag_values.register_key_flag_for_module(program, flag)
        adopted.append(flag)
  return adopted


def help_text(
  command_module: types.ModuleType | None,
  full: bool = False,
  flag_values: flags.FlagValues = flags.FLAGS,
) -> str:
  """The command's doc (or a usage line) and its flags (all flags if `full`)."""
  adopt_command_flags(flag_values)
  doc = (getattr(command_module, "__doc__", None) or "").strip()
  if not doc:
    doc = f"USAGE: {sys.argv[0]} [flags]"
  flag_help = flag_values.get_help() if full else flag_values.main_module_help()
  return f"{doc}\n\nflags:\n{flag_help.strip(chr(10))}\n"


def exit_if_help_asked(
  command_module: types.ModuleType | None,
  argv: list[str] | None = None,
  flag_values: flags.FlagValues = flags.FLAGS,
) -> None:
  """Prints the help and exits 0 if `argv` (default sys.argv) asks for it; else returns.

  Args:
    command_module: the module of the command's `main` (its doc is the help's text).
    argv: the command line, program first.
    flag_values: where the command's flags are.
  """
  kind = requested_help(sys.argv if argv is None else argv)
  if kind is None:
    return
  sys.stdout.write(help_text(command_module, full=kind == "full", flag_values=flag_values))
  sys.stdout.flush()
  sys.exit(0)
