"""Helpers shared by the trainer tests: tiny bindings and subprocess runs."""
import os
import re
import subprocess
import sys
import time

import gin
import tensorflow as tf

from effnet_gin.checkpoints import run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "bin")


def _bindings_of(gin_file):
  """The binding lines of a shipped .gin file (no includes or comments)."""
  with open(os.path.join(REPO, "gin_configs", gin_file)) as f:
    lines = [line.split("#")[0].strip() for line in f]
  return [line for line in lines if line and not line.startswith("include")]


# Shrinks any shipped config to a model and data that train in seconds on a
# CPU: the bindings of the shipped smoke.gin (a B0 at a tenth of its width and
# depth on 32 px in-graph fake images, 2 steps).
TINY_BINDINGS = _bindings_of("smoke.gin")


def latest_step(model_dir):
  """The step number of the newest checkpoint in model_dir, or None."""
  latest = tf.train.latest_checkpoint(model_dir)
  return None if latest is None else run_dir.checkpoint_step(latest)


def subprocess_env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  env.update(extra)
  return env


def trainer_command(model_dir, *gin_params, gin_file="demo.gin"):
  command = [
      sys.executable,
      os.path.join(BIN, "trainer"), f"--gin_file={gin_file}",
      f"--model_dir={model_dir}"
  ]
  command += [f"--gin_param={p}" for p in TINY_BINDINGS + list(gin_params)]
  return command


def run_trainer(model_dir, *gin_params, timeout=300, env=None, **kwargs):
  """Runs bin/trainer to completion; returns the CompletedProcess."""
  return subprocess.run(trainer_command(model_dir, *gin_params, **kwargs),
                        env=env or subprocess_env(), capture_output=True,
                        text=True, timeout=timeout, check=False)


def script(name):
  """The command that runs bin/<name> under this interpreter (and its -S)."""
  flags = ["-S"] if sys.flags.no_site else []
  return [sys.executable] + flags + [os.path.join(BIN, name)]


def run_logged(command, log_path, timeout=600):
  """Runs `command` to completion, its output into `log_path`.

  Returns:
    The output.

  Raises:
    AssertionError: when the command fails; the message ends with its output.
  """
  with open(log_path, "w") as log:
    completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                               cwd=REPO, timeout=timeout, check=False,
                               env=subprocess_env())
  with open(log_path) as log:
    output = log.read()
  assert completed.returncode == 0, f"{command}\n{output[-4000:]}"
  return output


def wait_until(condition, process, log_path, what, timeout=240):
  """Polls `condition()` until true; fails if the trainer exits first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = condition()
    if value:
      return value
    if process.poll() is not None:
      raise AssertionError(f"trainer exited ({process.returncode}) before "
                           f"{what}:\n{log_path.read_text()[-3000:]}")
    time.sleep(0.1)
  raise AssertionError(f"no {what} within {timeout}s")


def resolved(selector):
  """A bound value with macros and `@fn()` references evaluated."""
  value = gin.query_parameter(selector)
  while isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    value = value.scoped_configurable_fn()
  return value


def start_logged(model_dir, log_path, *params, env=None):
  """Starts bin/trainer with its log in a file (a pipe could fill and block)."""
  with open(log_path, "w") as log:
    return subprocess.Popen(trainer_command(str(model_dir), *params), env=env or
                            subprocess_env(), stdout=log, stderr=log)


def in_loop_step(log_path, at_least):
  """The last in-loop progress step in the log if it is >= at_least."""
  steps = re.findall(r"in-loop progress: step (\d+)", log_path.read_text())
  return int(steps[-1]) if steps and int(steps[-1]) >= at_least else None


def stopped_step(log_text):
  """The step of the log's 'Stopped by SIGTERM at step N' line."""
  return int(re.search(r"Stopped by SIGTERM at step (\d+)", log_text)[1])
