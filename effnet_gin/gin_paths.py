"""Finding and reading `.gin` files: the shipped configs, paths, includes.

No gin here: these are files. `effnet_gin.cli` parses them with gin;
`config_errors` reads them as text to say where a missing binding usually
comes from.
"""
import contextlib
import importlib.resources
import logging as py_logging
import os

import tensorflow as tf

from effnet_gin import config_errors

_CHECKOUT_GIN_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")


def shipped_gin_dir():
  """Returns the directory holding the shipped `.gin` files.

  After `pip install .` they live inside the package as
  `effnet_gin.gin_configs`; in a checkout (or an editable install) they are
  the top-level `gin_configs/` directory.
  """
  try:
    installed = importlib.resources.files("effnet_gin.gin_configs")
    if installed.joinpath("b0_tpu.gin").is_file():
      return str(installed)
  except ModuleNotFoundError:
    pass
  return _CHECKOUT_GIN_DIR


def shipped_paths():
  """Paths of every shipped `.gin` file, sorted by name."""
  directory = shipped_gin_dir()
  return [
      os.path.join(directory, name)
      for name in sorted(os.listdir(directory))
      if name.endswith(".gin")
  ]


def resolve_gin_file(name):
  """Finds a gin file given as a path or as a bare shipped name.

  Args:
    name: a path (local or any `tf.io.gfile` URL), or the name of a shipped
      config such as `b0_tpu.gin` (the `.gin` suffix may be omitted).

  Returns:
    The path to parse.

  Raises:
    FileNotFoundError: when neither the path nor a shipped config exists; the
      message lists the shipped configs.
  """
  if tf.io.gfile.exists(name):
    return name
  shipped = shipped_gin_dir()
  base = name if name.endswith(".gin") else name + ".gin"
  candidate = os.path.join(shipped, base)
  if os.path.sep not in name and os.path.isfile(candidate):
    return candidate
  available = [os.path.basename(path) for path in shipped_paths()]
  guess = config_errors.suggest(base, available)
  raise FileNotFoundError(
      f"gin file {name!r} is neither an existing path nor a shipped config"
      f"{f'; did you mean {guess!r}?' if guess else ''} (shipped configs, "
      f"in {shipped}: {', '.join(available)})")


def read_text(path):
  """The text of `path` (local or gs://), or None if it cannot be read."""
  try:
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  except (tf.errors.OpError, OSError):
    return None


def resolve_include(name, including):
  """Where gin finds `include 'name'` of the file `including`, or None."""
  for directory in (os.path.dirname(including), shipped_gin_dir(), ""):
    candidate = os.path.join(directory, name)
    if tf.io.gfile.exists(candidate):
      return candidate
  return None


def recipe_for_this_machine(tpu=None):
  """The shipped reference recipe for the hardware at hand.

  Args:
    tpu: whether a TPU is asked for (--tpu, --use_tpu); None: ask $TPU_NAME.

  Returns:
    (config name, the reason, for the log).
  """
  if tpu is None:
    tpu = bool(os.environ.get("TPU_NAME"))
  if tpu:
    return "b0_tpu.gin", "a TPU is named (--tpu, --use_tpu or $TPU_NAME)"
  if tf.config.list_physical_devices("GPU"):
    return "b0_gpu.gin", "a GPU is visible"
  return "b0_cpu.gin", "no TPU is named and no GPU is visible"


class _DropIncludeMisses(py_logging.Filter):
  """Drops gin's "Path not found" errors for includes it then finds."""

  def filter(self, record):
    return not (record.module == "resource_reader" and
                record.getMessage().startswith("Path not found"))


@contextlib.contextmanager
def quiet_include_lookups():
  """Drops gin's log ERRORs for include paths it tries before finding one."""
  # gin tries each include relative to the working directory before its
  # search paths and logs an ERROR for that first miss; a path missing
  # everywhere still raises, so the message carries no information.
  # On the root logger, not its handlers: gin's module-level logging.error
  # installs a handler (basicConfig) when there is none yet.
  log_filter = _DropIncludeMisses()
  root = py_logging.getLogger()
  root.addFilter(log_filter)
  try:
    yield
  finally:
    root.removeFilter(log_filter)
