"""Command-line glue: absl flags → gin files and bindings.

This is the only library module that knows about absl flags. The `bin/`
scripts call `define_flags()` at import time, then hand the parsed flag values
to `configure()`, which resolves `--gin_file` names, turns the reference
README's shortcut flags (`--tpu`, `--data_dir`, `--train_batch_size`,
`--bigtable_instance`, …) into gin bindings, parses everything with unknown
names rejected, and finalizes the config.

Precedence, lowest to highest: the `.gin` files in the order given, then the
shortcut flags, then `--gin_param` bindings in the order given.
"""
import contextlib
import importlib.resources
import inspect
import logging as py_logging
import os
import shlex
import sys

from absl import flags
from absl import logging
import gin
import tensorflow as tf

from effnet_gin import data
# Importing the configurables registers every gin-bound builder.
from effnet_gin import configurables  # noqa: F401  pylint: disable=unused-import

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
  available = sorted(f for f in os.listdir(shipped) if f.endswith(".gin"))
  raise FileNotFoundError(
      f"gin file {name!r} is neither an existing path nor a shipped config in "
      f"{shipped}; shipped configs: {', '.join(available)}")


def _quote(value):
  """Formats a Python value as a gin literal."""
  return repr(value)


def shortcut_bindings(*, tpu=None, zone=None, project=None, data_dir=None,
                      train_batch_size=None, train_steps=None,
                      bigtable_project=None, bigtable_instance=None,
                      bigtable_table=None):
  """Turns the reference README's flags into gin bindings.

  As in the reference, `data_dir` selects the ImageNet-format TFRecord source
  in that directory and `bigtable_instance` selects Cloud Bigtable, whatever
  source the `.gin` files named. Giving both is ambiguous and rejected.

  Returns:
    A list of gin binding strings.

  Raises:
    ValueError: for contradictory or out-of-range flag values.
  """
  bindings = []
  if tpu:
    bindings.append(f"build_strategy.tpu = {_quote(tpu)}")
  if zone:
    bindings.append(f"build_strategy.zone = {_quote(zone)}")
  if project:
    bindings.append(f"build_strategy.project = {_quote(project)}")
  if data_dir and bigtable_instance:
    raise ValueError(
        f"--data_dir={data_dir!r} and --bigtable_instance={bigtable_instance!r} "
        "both name an input source; give one of them")
  if data_dir:
    bindings += ["build_dataset.source = @TFRecordSource()",
                 f"TFRecordSource.data_dir = {_quote(data_dir)}"]
  if bigtable_instance:
    bt_project = bigtable_project or project
    if not bt_project:
      raise ValueError(
          f"--bigtable_instance={bigtable_instance!r} needs --bigtable_project "
          "or --project")
    bindings += ["build_dataset.source = @BigtableSource()",
                 f"BigtableSource.project = {_quote(bt_project)}",
                 f"BigtableSource.instance = {_quote(bigtable_instance)}"]
    if bigtable_table:
      bindings.append(f"BigtableSource.table = {_quote(bigtable_table)}")
  elif bigtable_project or bigtable_table:
    raise ValueError("--bigtable_project and --bigtable_table need "
                     "--bigtable_instance")
  for flag_name, value in (("train_batch_size", train_batch_size),
                           ("train_steps", train_steps)):
    if value is None:
      continue
    if value <= 0:
      raise ValueError(f"--{flag_name} must be positive, got {value}")
    bindings.append(f"{flag_name.upper()} = {int(value)}")
  return bindings


def configure(gin_files, gin_params=(), *, needs_input=False, **shortcuts):
  """Parses gin files, shortcut flags and `--gin_param` bindings; finalizes.

  Args:
    gin_files: gin file paths or shipped names (see `resolve_gin_file`).
    gin_params: extra bindings, applied last.
    needs_input: also check that the selected input source has every value
      the files mark `%gin.REQUIRED` (trainer and evaluator read data; the
      exporter does not).
    **shortcuts: keyword arguments of `shortcut_bindings`.

  Returns:
    The list of bindings applied after the files (for logging).

  Raises:
    FileNotFoundError: for a gin file that cannot be found.
    ValueError: for unknown configurables or parameters, bad flags, or (with
      `needs_input`) a required input-source value left unset.
  """
  if not gin_files:
    raise ValueError("give at least one --gin_file (e.g. --gin_file=demo.gin)")
  paths = [resolve_gin_file(name) for name in gin_files]
  # `include 'train_reference.gin'` in any config finds the shipped files.
  gin.add_config_file_search_path(shipped_gin_dir())
  bindings = shortcut_bindings(**shortcuts) + list(gin_params)
  with _quiet_include_lookups():
    gin.parse_config_files_and_bindings(
        paths, bindings, finalize_config=False, skip_unknown=False)
  _settle_required_input(needs_input)
  gin.finalize()
  return bindings


_SOURCE_FLAGS = {"TFRecordSource.data_dir": "--data_dir=DIR",
                 "BigtableSource.instance": "--bigtable_instance=NAME"}


def _settle_required_input(needs_input):
  """Checks the input sources' `%gin.REQUIRED` values before finalizing.

  Gin rejects, when it finalizes, every binding still `%gin.REQUIRED`. For
  the input source `build_dataset.source` selects that is what we want, with
  the flag to pass in the message; the other sources (e.g. TFRecordSource's
  data_dir under `--bigtable_instance`), and every source when the tool reads
  no data (`needs_input=False`: exporter, predict), are never built, so their
  required values are waived (bound to None).

  Raises:
    ValueError: naming a required value of the selected source and the flag
      that sets it.
  """
  selected = _selected_source()
  for source in _source_classes():
    selector = f"effnet_gin.data.{source.__name__}"
    for name in inspect.signature(source).parameters:
      key = f"{selector}.{name}"
      try:
        value = gin.query_parameter(key)
      except ValueError:
        continue
      if not _is_required(value):
        continue
      if needs_input and selector == selected:
        hint = _SOURCE_FLAGS.get(f"{source.__name__}.{name}")
        how = f"pass {hint} or bind it" if hint else "bind it"
        raise ValueError(f"{key} is required (%gin.REQUIRED in the config) "
                         f"and not set: {how}, e.g. --gin_param=\"{key} = "
                         "...\"")
      with gin.unlock_config():
        gin.bind_parameter(key, None)


def _selected_source():
  """The selector of the configurable `build_dataset.source` names, or None."""
  try:
    source = gin.query_parameter("effnet_gin.data.build_dataset.source")
  except ValueError:
    return None
  if isinstance(source, gin.config.ConfigurableReference):
    return source.configurable.selector
  return None


def _source_classes():
  return (data.TFRecordSource, data.RandomNoiseSource,
          data.LearnableShapesSource, data.TFDSSource, data.ImageFolderSource,
          data.BigtableSource)


def _is_required(value):
  return (isinstance(value, gin.config.ConfigurableReference)
          and value.scoped_selector == "gin.REQUIRED/gin.constant")


class _DropIncludeMisses(py_logging.Filter):
  """Drops gin's "Path not found" errors for includes it then finds."""

  def filter(self, record):
    return not (record.module == "resource_reader" and
                record.getMessage().startswith("Path not found"))


@contextlib.contextmanager
def _quiet_include_lookups():
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


def command_line():
  """The exact command line of this process, shell-quoted."""
  return " ".join(shlex.quote(arg) for arg in [sys.executable] + sys.argv)


# ---------------------------------------------------------------------------
# Flag definitions shared by the bin/ scripts.
# ---------------------------------------------------------------------------


def define_common_flags():
  """Flags every bin/ script accepts: config, hardware and input sources."""
  flags.DEFINE_multi_string(
      "gin_file", [], "Gin file, a path or a shipped name such as b0_tpu.gin. "
      "Repeatable; later files override earlier ones.")
  flags.DEFINE_multi_string(
      "gin_param", [], "Gin binding, e.g. \"TRAIN_STEPS = 1000\". Repeatable; "
      "applied after the files and the shortcut flags.")
  flags.DEFINE_string("model_dir", None, "Directory (local or gs://) holding "
                      "checkpoints, summaries and the written configs.")
  flags.DEFINE_string("tpu", None, "Cloud TPU name or grpc:// address.")
  flags.DEFINE_string("zone", None, "GCE zone of the Cloud TPU.")
  flags.DEFINE_string("project", None, "GCP project of the Cloud TPU; the "
                      "default for --bigtable_project.")
  flags.DEFINE_string("data_dir", None, "Directory (local or gs://) of "
                      "ImageNet-format TFRecords train-*/validation-*; selects "
                      "the TFRecord source.")
  flags.DEFINE_string("bigtable_project", None, "GCP project of the Cloud "
                      "Bigtable instance (defaults to --project).")
  flags.DEFINE_string("bigtable_instance", None, "Cloud Bigtable instance "
                      "holding the data; selects the Bigtable source.")
  flags.DEFINE_string("bigtable_table", None, "Cloud Bigtable table "
                      "(default of the source: imagenet).")


def shortcut_values(flag_values):
  """Collects the shortcut flags present on `flag_values` for `configure`."""
  names = ("tpu", "zone", "project", "data_dir", "train_batch_size",
           "train_steps", "bigtable_project", "bigtable_instance",
           "bigtable_table")
  return {name: flag_values[name].value for name in names
          if name in flag_values}


def configure_from_flags(flag_values, *, needs_input=False):
  """Runs `configure` with the values of the flags defined above."""
  bindings = configure(flag_values.gin_file, flag_values.gin_param,
                       needs_input=needs_input, **shortcut_values(flag_values))
  logging.info("gin files: %s; bindings: %s", flag_values.gin_file, bindings)
  return bindings


def sets_train_steps(flag_values):
  """Whether the command line sets the train steps (flag or gin binding)."""
  if "train_steps" in flag_values and flag_values.train_steps is not None:
    return True
  return any("train_steps" in param.lower() for param in flag_values.gin_param)
