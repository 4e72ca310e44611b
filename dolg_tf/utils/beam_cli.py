"""What the Apache Beam commands share: absl flags plus Beam's pipeline options.

    def main(argv):
      options = beam_cli.pipeline_options(argv)   # --runner=..., --project=..., ...
      ...
    def run(): beam_cli.run(main)

The project's flags are absl flags; every other `--flag` of the command line is
handed to Beam (`PipelineOptions`), as in Beam's own examples. A flag that
neither absl nor any of Beam's option groups knows is a user error (one line,
exit status 2), never silently dropped as Beam itself would.
"""

import logging
from collections.abc import Callable

from absl import flags
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options import pipeline_options as beam_options

import dolg_tf
from dolg_tf.utils import cli

DEFAULT_RUNNER = "DirectRunner"


def _known_beam_flags() -> set[str]:
  """Every option string (`--runner`, `--project`, ...) of Beam's option groups."""
  parser = beam_options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  for group in beam_options.PipelineOptions.__subclasses__() + [beam_options.PipelineOptions]:
    stack = [group]
    while stack:
      cls = stack.pop()
      stack.extend(cls.__subclasses__())
      try:
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
      except Exception:  # pylint: disable=broad-except  (an option defined twice)
        pass
  return {s for action in parser._actions for s in action.option_strings}  # pylint: disable=protected-access


def pipeline_options(argv: list[str], **overrides) -> beam_options.PipelineOptions:
  """Beam's PipelineOptions from the arguments absl left (argv[1:]), plus `overrides`.

  The runner defaults to the DirectRunner.

  Raises:
    cli.UserError: an argument no Beam option group knows, or a bare word.
  """
  args = list(argv[1:])
  known = _known_beam_flags()
  for arg in args:
    if not arg.startswith("--"):
      raise cli.UserError(f"unexpected argument {arg!r} (Beam options are --name=value)")
    name = arg.split("=", 1)[0]
    if name not in known:
      raise cli.UserError(f"unknown flag {name} (not this command's, nor a Beam pipeline option)")
  options = beam_options.PipelineOptions(args, **overrides)
  standard = options.view_as(beam_options.StandardOptions)
  if not standard.runner:
    standard.runner = DEFAULT_RUNNER
  return options


def _parse_known_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv, known_only=True)
  except flags.Error as e:
    cli.fail(str(e))


def run(main: Callable[[list[str]], int | None]) -> None:
  """cli.run for a Beam command: absl parses its flags, Beam gets the rest (`pipeline_options`).

  Beam's INFO lines (every worker's start-up and shutdown, relayed by the
  DirectRunner) are hidden unless --verbose.
  """
  if not dolg_tf.VERBOSE:
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
  cli.run(main, flags_parser=_parse_known_flags)


def counters(result, namespace: str, names) -> dict[str, int]:
  """A finished pipeline's counters of `namespace`, each of `names` present (0 if never set).

  Committed values are taken when the runner has them, attempted ones otherwise.
  """
  found = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
  values = dict.fromkeys(names, 0)
  for counter in found:
    value = counter.committed if counter.committed is not None else counter.attempted
    values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value or 0)
  return values
