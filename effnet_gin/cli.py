"""Command-line glue: the bin/ scripts' flags → gin files and bindings.

The `bin/` scripts call `define_common_flags()` at import time, then
`configure_or_exit()` with the parsed flags: it resolves the `--gin_file`
names (none given: the trainer and evaluator run the reference recipe for
this machine, `b0_tpu.gin` with `--tpu`, else `b0_gpu.gin` with a GPU, else
`b0_cpu.gin`), turns the reference's flags (`--tpu`, `--data_dir`,
`--train_batch_size`, `--model_name`, … : the table of `reference_flags`)
into gin bindings, parses everything with unknown names rejected, checks
that the tool's entry point gets what it needs, and finalizes the config.
A configuration mistake ends the program with one line (`config_errors`).

Precedence, lowest to highest: the `.gin` files in the order given, then the
flags and `--gin_param` bindings in the order they stand on the command line:
of a flag and a `--gin_param` setting the same binding, the later wins (as
between two `--gin_param`s). `configure()`, for Python callers, applies the
flags before its `gin_params`.
"""
import inspect
import os
import sys
import tokenize

from absl import logging
import gin

from effnet_gin import command_line as command_line_lib
from effnet_gin import config_errors
from effnet_gin import data
from effnet_gin import gin_paths
from effnet_gin import preflight
from effnet_gin import reference_flags
# Importing the configurables registers every gin-bound builder.
from effnet_gin import configurables  # noqa: F401  pylint: disable=unused-import

# The bin/ scripts' names for what now lives in these modules; `run` is their
# `app.run`, with one line on a person's mistake.
shipped_gin_dir = gin_paths.shipped_gin_dir
resolve_gin_file = gin_paths.resolve_gin_file
define_common_flags = command_line_lib.define_common_flags
command_line = command_line_lib.command_line
sets_train_steps = command_line_lib.sets_train_steps
run = preflight.run
tool_flag = command_line_lib.tool_flag


def configure(gin_files, gin_params=(), *, needs_input=False, role=None,
              **flag_values):
  """Parses gin files, the reference's flags and `--gin_param`s; finalizes.

  Args:
    gin_files: gin file paths or shipped names (see `resolve_gin_file`).
    gin_params: extra bindings, applied after the flags.
    needs_input: also check that an input source is selected and has every
      value the files mark `%gin.REQUIRED` (trainer and evaluator read data;
      the exporter does not).
    role: 'train', 'evaluate', 'export' or 'predict': check that this entry
      point gets every argument it needs and waive what only the others use
      (see `_preflight`); None checks neither.
    **flag_values: values of the flags of `reference_flags` (None: not
      given), applied in this order.

  Returns:
    The list of bindings applied after the files (for logging).

  Raises:
    FileNotFoundError: for a gin file that cannot be found.
    ValueError: for unknown configurables or parameters, bad flags, or a
      required value left unset (a `config_errors.ConfigError`).
  """
  if not gin_files:
    raise ValueError("give at least one --gin_file (e.g. --gin_file=demo.gin)")
  bindings = reference_flags.flag_bindings(flag_values) + list(gin_params)
  _parse_and_finalize(gin_files, bindings, needs_input=needs_input, role=role)
  return bindings


def shortcut_bindings(**flag_values):
  """The bindings of the reference's flags (see `reference_flags`)."""
  return reference_flags.flag_bindings(flag_values)


def _parse_and_finalize(gin_files, bindings, *, needs_input, role):
  paths = [resolve_gin_file(name) for name in gin_files]
  # `include 'train_reference.gin'` in any config finds the shipped files.
  gin.add_config_file_search_path(shipped_gin_dir())
  with gin_paths.quiet_include_lookups():
    gin.parse_config_files_and_bindings(paths, bindings, finalize_config=False,
                                        skip_unknown=False)
  _preflight(role, paths)
  _settle_required_input(needs_input)
  gin.finalize()


_SOURCE_FLAGS = {
    "TFRecordSource.data_dir": "--data_dir=DIR",
    "BigtableSource.instance": "--bigtable_instance=NAME",
    "ImageGlobSource.pattern": "--imagenet_eval_glob=GLOB",
    "ImageGlobSource.labels_file": "--imagenet_eval_label=FILE"
}


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
  if needs_input and not _bound("effnet_gin.data.build_dataset.source"):
    raise config_errors.ConfigError(
        "no input source is selected: pass --data_dir=DIR (ImageNet-format "
        "TFRecords) or --bigtable_instance=NAME, or bind "
        "effnet_gin.data.build_dataset.source")
  for source in data.SOURCE_CLASSES:
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


def _configured_source(needs_input):
  """The input source `build_dataset.source` configures, built; or None."""
  value = _bound_value("effnet_gin.data.build_dataset.source")
  if needs_input and isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn()
  return None


def _bound_value(key):
  return gin.query_parameter(key) if _bound(key) else None


def _is_required(value):
  return (isinstance(value, gin.config.ConfigurableReference) and
          value.scoped_selector == "gin.REQUIRED/gin.constant")


def _bound(key):
  try:
    gin.query_parameter(key)
  except ValueError:
    return False
  return True


# --- Checks before finalizing: what each tool needs, and what it may lack. ---

_TRAIN_ONLY = ("effnet_gin.train.train", "effnet_gin.train.build_schedule",
               "effnet_gin.train.build_optimizer",
               "effnet_gin.train.ExponentialMovingAverage")
# role: (the entry point it calls, the configurables it never calls).
_ROLES = {
    "train": ("effnet_gin.train.train", ()),
    "evaluate": ("effnet_gin.train.evaluate", _TRAIN_ONLY),
    "export": ("effnet_gin.train.export",
               _TRAIN_ONLY + ("effnet_gin.train.evaluate",)),
    "predict":
        (None,
         _TRAIN_ONLY + ("effnet_gin.train.evaluate", "effnet_gin.train.export",
                        "effnet_gin.train.export_lite")),
}
_MACRO = "/gin.macro"


def _preflight(role, paths):
  """Checks the parsed config for `role` before gin finalizes it.

  A macro that is used but never set, or a `%gin.REQUIRED` value, only in
  bindings of configurables this role never calls (INIT_CHECKPOINT of
  finetune.gin, for the evaluator) is waived: bound to None. Then the
  entry point's required arguments must all be bound, and every other macro
  used must be set; otherwise the error says what to give.

  Raises:
    config_errors.ConfigError: naming what is missing and where it usually
      comes from.
  """
  if role is None:
    return
  entry, never_called = _ROLES[role]
  bindings = _config_bindings()
  defined = {
      scope for scope, selector, _, _ in bindings if selector == "gin.macro"
  }
  users = {}  # Macro used but not set: {name: selectors of its users}.
  for scope, selector, param, references in bindings:
    for reference in references:
      name = reference[:-len(_MACRO)] if reference.endswith(_MACRO) else None
      if name is not None and name not in defined:
        users.setdefault(name, set()).add(selector)
      if (selector in never_called and
          reference == "gin.REQUIRED/gin.constant"):
        gin.bind_parameter(f"{scope}{'/' if scope else ''}{selector}.{param}",
                           None)
  for name in [name for name in users if users[name] <= set(never_called)]:
    gin.bind_parameter(f"{name}{_MACRO}.value", None)
    del users[name]
  files = config_errors.ConfigFiles(gin_paths.read_text,
                                    gin_paths.resolve_include)
  unbound = _unbound_arguments(entry) if entry else []
  if unbound:
    raise config_errors.ConfigError(
        config_errors.missing_arguments(
            entry, unbound, given=paths, files=files,
            shipped=gin_paths.shipped_paths(),
            preferred=gin_paths.recipe_for_this_machine()[0]))
  if users:
    raise config_errors.ConfigError(
        config_errors.missing_macro(
            sorted(users)[0], given=paths, files=files, known=defined))
  _warn_unused_macros(bindings, defined)


def _warn_unused_macros(bindings, defined):
  """Logs each macro set that no binding uses, with the closest used one."""
  used = {
      reference[:-len(_MACRO)]
      for _, _, _, references in bindings
      for reference in references
      if reference.endswith(_MACRO)
  }
  for name in sorted(defined - used):
    guess = config_errors.suggest(name, used)
    logging.warning("%s is set but no binding uses it%s", name,
                    f"; did you mean {guess}?" if guess else "")


def _config_bindings():
  """(scope, selector, parameter, [referenced selectors]) of every binding.

  gin has no public listing of its parsed bindings (finalize hooks get
  them, but only after gin's own hooks have raised); this reads its
  config read-only, here only.
  """
  result = []
  config = gin.config._CONFIG  # pylint: disable=protected-access
  for (scope, selector), params in config.items():
    for param, value in params.items():
      references = [
          reference.scoped_selector
          for reference in gin.config.iterate_references({param: value})
      ]
      result.append((scope, selector, param, references))
  return result


def _registered():
  """{selector: Configurable} of every registered configurable (read-only)."""
  return dict(gin.config._REGISTRY.items())  # pylint: disable=protected-access


def _parameters(configurable):
  try:
    parameters = inspect.signature(configurable.wrapped).parameters
  except (TypeError, ValueError):
    return {}
  return {
      name: parameter
      for name, parameter in parameters.items()
      if name not in (configurable.denylist or
                      ()) and name not in ("self", "args", "kwargs")
  }


def _unbound_arguments(selector):
  """The required parameters of `selector` that no binding sets."""
  configurable = _registered()[selector]
  return [
      name for name, parameter in _parameters(configurable).items()
      if parameter.default is parameter.empty and parameter.kind in (
          parameter.KEYWORD_ONLY,
          parameter.POSITIONAL_OR_KEYWORD) and not _bound(f"{selector}.{name}")
  ]


def configure_from_flags(flag_values, *, role, needs_input=False,
                         extra_bindings=(), argv=None):
  """`configure` from parsed flags: the gin files or the default recipe.

  Without `--gin_file` the trainer and evaluator run the reference recipe
  for this machine (`gin_paths.recipe_for_this_machine`); the trainer then
  also takes main.py's default mode, train_and_eval. Logs the reference
  flags that are ignored.

  Args:
    flag_values: parsed `absl.flags.FlagValues` with `define_common_flags`.
    role: see `configure`.
    needs_input: see `configure`.
    extra_bindings: bindings applied after the command line's.
    argv: the command line that was parsed (default `sys.argv`).

  Returns:
    The bindings applied after the files.

  Raises:
    The errors of `configure`.
  """
  files = list(flag_values.gin_file or [])
  bindings = (command_line_lib.command_line_bindings(flag_values, argv) +
              list(extra_bindings))
  if not files and role in ("train", "evaluate"):
    name, why = gin_paths.recipe_for_this_machine(_asks_for_tpu(flag_values))
    logging.info("No --gin_file: running the reference recipe %s (%s)", name,
                 why)
    files = [name]
    if role == "train":
      bindings.insert(0, "effnet_gin.train.train.mode = 'train_and_eval'")
  elif not files:
    raise config_errors.ConfigError(
        "give --gin_file: the files the run was trained with (e.g. "
        "--gin_file=b0_cpu.gin), or its MODEL_DIR/config.gin")
  refused = command_line_lib.check_reference_flags(flag_values)
  if refused:
    raise config_errors.ConfigError(refused)
  _parse_and_finalize(files, bindings, needs_input=needs_input, role=role)
  logging.info("gin files: %s; bindings: %s", files, bindings)
  return bindings


def _asks_for_tpu(flag_values):
  """--use_tpu if given, else whether --tpu names one; None: neither given."""
  if flag_values["use_tpu"].present:
    return bool(flag_values.use_tpu)
  return bool(flag_values.tpu) or None


# What configuring raises for a mistake in the flags or the files.
CONFIG_ERRORS = (ValueError, TypeError, OSError, SyntaxError,
                 tokenize.TokenError)


def configure_or_exit(flag_values, **kwargs):
  """`configure_from_flags`, exiting with one line on a configuration error.

  The line names the program, what is wrong, the file and line where gin
  knows them, and the closest known name for a misspelt one; the exit
  status is 1. Never the whole config, never a traceback. Then checks the
  directories the tool writes and the input files it reads
  (`preflight.check_run_paths`), before anything is built.

  Args:
    flag_values: parsed `absl.flags.FlagValues`.
    **kwargs: keyword arguments of `configure_from_flags`.

  Returns:
    The bindings applied after the files.
  """
  try:
    bindings = configure_from_flags(flag_values, **kwargs)
    preflight.check_run_paths(
        flag_values, role=kwargs.get("role"),
        source=_configured_source(kwargs.get("needs_input")),
        train_and_eval=_bound_value(
            "effnet_gin.train.train.mode") == "train_and_eval")
    return bindings
  except CONFIG_ERRORS as error:
    program = os.path.basename(sys.argv[0]) or "effnet_gin"
    sys.exit(f"{program}: {explain(error)}")


def explain(error):
  """One line for an error of `configure`, with the closest known name."""
  known = {
      selector: list(_parameters(configurable))
      for selector, configurable in _registered().items()
  }
  return config_errors.one_line(error, known=known)
