"""Fault injection for crash tests: `point(name)` kills this process there.

With the environment variable `EFFNET_GIN_KILL_AT=<point>[:<n>]` set, the
process sends itself SIGKILL the n-th time (default: the first) it reaches
the named point. The kill is real (no cleanup, no `finally`, no flush): only
its timing is chosen. tests/test_crash_campaign.py and
bench/crash_campaign.py use it to kill the trainer and the evaluator at the
moments a random kill rarely hits. Unset, `point` returns at once.

The points:

  checkpoint_written  a trainer save wrote the checkpoint's files, but the
                      `checkpoint` state file does not list it yet (and
                      retention has not deleted the oldest one).
  best_copied         a new best checkpoint's files were copied into best/
                      and best/'s state file names it, but best_result.json
                      (the record that commits it) is not written.
  result_offered      a result was offered to best/ (archived or not), but
                      eval/results.jsonl does not have it yet.
"""
import os
import signal

ENV_VAR = "EFFNET_GIN_KILL_AT"
POINTS = ("checkpoint_written", "best_copied", "result_offered")


def _parse(spec):
  """(point, n) of an `EFFNET_GIN_KILL_AT` value, or None when unset.

  Raises:
    ValueError: naming the variable, for an unknown point or a bad count.
  """
  if not spec:
    return None
  name, _, count = spec.partition(":")
  if name not in POINTS:
    raise ValueError(f"{ENV_VAR}={spec!r}: unknown point {name!r} (known: "
                     f"{', '.join(POINTS)})")
  if count and not (count.isdigit() and int(count) > 0):
    raise ValueError(f"{ENV_VAR}={spec!r}: the count after ':' must be a "
                     "positive integer")
  return name, int(count or 1)


_TARGET = _parse(os.environ.get(ENV_VAR))
_reached = {}


def point(name):
  """Kills this process if it is the configured point's n-th arrival.

  Args:
    name: one of `POINTS`.
  """
  if _TARGET is None or _TARGET[0] != name:
    return
  _reached[name] = _reached.get(name, 0) + 1
  if _reached[name] == _TARGET[1]:
    os.kill(os.getpid(), signal.SIGKILL)
