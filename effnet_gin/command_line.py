"""The command line of the bin/ scripts: their shared flags, in order.

`define_common_flags` defines the config flags (`--gin_file`, `--gin_param`,
`--model_dir`), the input-source flags and every flag of `reference_flags`'
table; `command_line_bindings` turns those given into gin binding strings in
the order they stand on the command line, so that of a flag and a
`--gin_param` for the same binding the later wins, as between two
`--gin_param`s. `effnet_gin.cli` parses the result with gin.
"""
import shlex
import sys

from absl import flags
from absl import logging

from effnet_gin import reference_flags


def command_line():
  """The exact command line of this process, shell-quoted."""
  return " ".join(shlex.quote(arg) for arg in [sys.executable] + sys.argv)


# ---------------------------------------------------------------------------
# Flag definitions shared by the bin/ scripts.
# ---------------------------------------------------------------------------

_DEFINE = {
    "integer": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "string": flags.DEFINE_string,
    "bool": flags.DEFINE_bool
}


def define_common_flags(flag_values=flags.FLAGS, tool=None):
  """Flags every gin-configured bin/ script accepts.

  The config (`--gin_file`, `--gin_param`, `--model_dir`), the input-source
  flags, and the reference's flags of `reference_flags`: its aliases of gin
  bindings, its synonyms and the flags accepted and ignored, with those of
  `tool` ('evaluator': eval_ckpt_main.py's, 'exporter': export_model.py's).
  None of them has a default: a flag not given leaves the config's value.

  Args:
    flag_values: the `absl.flags.FlagValues` to define them in.
    tool: the bin/ tool's name, for its own reference flags.
  """

  def define(kind, name, helptext, default=None):
    _DEFINE[kind](name, default, helptext, flag_values=flag_values)

  flags.DEFINE_multi_string(
      "gin_file", [], "Gin file, a path or a shipped name such as b0_tpu.gin. "
      "Repeatable; later files override earlier ones. Default (trainer, "
      "evaluator): the reference recipe for this machine, b0_tpu.gin with "
      "--tpu, else b0_gpu.gin with a GPU, else b0_cpu.gin.",
      flag_values=flag_values)
  flags.DEFINE_multi_string(
      "gin_param", [], "Gin binding, e.g. \"TRAIN_STEPS = 1000\". Repeatable; "
      "applied after the files; of a flag and a --gin_param setting the same "
      "binding, the later on the command line wins.", flag_values=flag_values)
  define(
      "string", "model_dir", "Directory (local or gs://) holding "
      "checkpoints, summaries and the written configs.")
  define(
      "string", "data_dir", "Directory (local or gs://) of ImageNet-format "
      "TFRecords train-*/validation-*; selects the TFRecord source.")
  define(
      "string", "bigtable_project", "GCP project of the Cloud Bigtable "
      "instance (defaults to --project).")
  define(
      "string", "bigtable_instance", "Cloud Bigtable instance holding the "
      "data; selects the Bigtable source.")
  define("string", "bigtable_table", "Cloud Bigtable table (default of the "
         "source: imagenet).")
  if tool == "evaluator":
    _define_glob_flags(define)
  for alias in reference_flags.ALIASES:
    if alias.tools is None or tool in alias.tools:
      sets = f" Sets {' and '.join(alias.keys)}." if alias.keys else ""
      define(alias.type, alias.flag, f"{alias.help}{sets}")
  for name, ours in reference_flags.SYNONYMS.items():
    define("string", name, f"The reference's name of --{ours}.")
  for name, (kind, ours) in reference_flags.TOOL_SYNONYMS.get(tool, {}).items():
    define(kind, name, f"The reference's name of --{ours}.")
  ignored = dict(reference_flags.IGNORED,
                 **reference_flags.TOOL_IGNORED.get(tool, {}))
  for name, (kind, why) in ignored.items():
    define(kind, name, f"The reference's; accepted and ignored: {why}.")
  for name, (kind, how) in reference_flags.TOOL_REFUSED.get(tool, {}).items():
    define(kind, name, f"The reference's; not taken here: {how}.")


def _define_glob_flags(define):
  define(
      "string", "imagenet_eval_glob", "Evaluate the image files this glob "
      "matches (sorted), e.g. /data/val/*.JPEG, with --imagenet_eval_label; "
      "selects ImageGlobSource (eval_ckpt_main's --runmode=imagenet).")
  define(
      "string", "imagenet_eval_label", "Labels of --imagenet_eval_glob's "
      "files: one integer per line, 0-based, in sorted file order.")
  define(
      "integer", "num_images", "With --imagenet_eval_glob: the first this "
      "many files (default and negative: all; the reference's default is "
      "5000).")


def tool_flag(flag_values, name, tool):
  """The value of our flag `name`, or of the reference's name for it.

  Of the two given, the reference's (`reference_flags.TOOL_SYNONYMS`)
  counts only when ours is not given.

  Args:
    flag_values: parsed `absl.flags.FlagValues`.
    name: our flag's name, e.g. 'checkpoint'.
    tool: the bin/ tool.

  Returns:
    The value.
  """
  if flag_values[name].present:
    return flag_values[name].value
  for synonym, (_, ours) in reference_flags.TOOL_SYNONYMS.get(tool, {}).items():
    if ours == name and flag_values[synonym].present:
      return flag_values[synonym].value
  return flag_values[name].value


def _translated_flags():
  return (set(reference_flags.BY_FLAG) | set(reference_flags.SOURCE_FLAGS) |
          set(reference_flags.SYNONYMS))


def command_line_bindings(flag_values, argv=None):
  """The bindings of the flags and `--gin_param`s given, in their order.

  Args:
    flag_values: parsed `absl.flags.FlagValues`.
    argv: the command line (default `sys.argv`) that was parsed.

  Returns:
    A list of gin binding strings (see `ordered_bindings`).

  Raises:
    ValueError: for a flag value that is not accepted.
  """
  argv = sys.argv if argv is None else argv
  args = flag_values.read_flags_from_files(list(argv[1:]), force_gnu=False)

  def is_boolean(name):
    return flag_values[name].boolean if name in flag_values else None

  values = {
      name: flag_values[name].value
      for name in _translated_flags()
      if name in flag_values and flag_values[name].present
  }
  return ordered_bindings(command_line_order(args, is_boolean), values,
                          list(flag_values.gin_param or []))


def command_line_order(args, is_boolean):
  """Where the flags and `--gin_param`s stand on a command line.

  Args:
    args: the arguments after the program name, `--flagfile`s expanded.
    is_boolean: function name → True (a boolean flag), False (a flag that
      takes a value) or None (not a flag of this program).

  Returns:
    A list of ('flag', name) and ('param', k) items in command-line order,
    ('param', k) standing for the k-th `--gin_param`.
  """
  order, params, i = [], 0, 0
  while i < len(args):
    arg, i = args[i], i + 1
    if arg == "--":
      break
    if not arg.startswith("-") or arg == "-":
      continue
    name, sep, _ = arg.lstrip("-").partition("=")
    if is_boolean(name) is None and name.startswith("no"):
      name = name[2:]
    boolean = is_boolean(name)
    if boolean is None:
      continue
    if not sep and not boolean:
      i += 1  # The value is the next argument.
    if name == "gin_param":
      order.append(("param", params))
      params += 1
    else:
      order.append(("flag", name))
  return order


def ordered_bindings(order, values, params):
  """The flags' and `--gin_param`s' bindings, in command-line order.

  A flag given twice acts where it last stands (its value is the last one);
  a flag given but not found in `order` acts first.

  Args:
    order: `command_line_order`'s result.
    values: {flag name: value} of the flags of this module that were given.
    params: the `--gin_param` values, in order.

  Returns:
    A list of gin binding strings; gin applies the later of two for a key.

  Raises:
    ValueError: for a value a flag does not accept.
  """
  if [k for kind, k in order if kind == "param"] != list(range(len(params))):
    order = [("param", k) for k in range(len(params))]  # Not this argv's.
  last = {
      name: pos
      for pos, (kind, name) in enumerate(order)
      if kind == "flag" and name in values
  }
  order = ([("flag", name) for name in values if name not in last] +
           [(kind, item)
            for pos, (kind, item) in enumerate(order)
            if kind == "param" or last.get(item) == pos])
  values = {item: values[item] for kind, item in order if kind == "flag"}
  bindings, pending = [], []
  for kind, item in order:
    if kind == "flag":
      pending.append(item)
      continue
    bindings += reference_flags.flag_bindings(values, emit=pending)
    bindings.append(params[item])
    pending = []
  return bindings + reference_flags.flag_bindings(values, emit=pending)


def sets_train_steps(flag_values):
  """Whether the command line sets the train steps (flag or gin binding)."""
  if "train_steps" in flag_values and flag_values.train_steps is not None:
    return True
  return any("train_steps" in param.lower() for param in flag_values.gin_param)


def check_reference_flags(flag_values):
  """Logs the reference flags given that are ignored here.

  Returns:
    The message for a given reference flag that effnet_gin refuses (with
    what to give instead), or None.
  """
  for tool in reference_flags.TOOL_REFUSED.values():
    for name, (_, how) in tool.items():
      if name in flag_values and flag_values[name].present:
        return f"--{name} is the reference's export_model.py flag: {how}"
  ignored = dict(reference_flags.IGNORED)
  for tool in reference_flags.TOOL_IGNORED.values():
    ignored.update(tool)
  for name, (_, why) in ignored.items():
    if name in flag_values and flag_values[name].present:
      logging.warning("--%s is the reference's and ignored here: %s", name, why)
  return None
