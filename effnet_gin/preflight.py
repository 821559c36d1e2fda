"""What the bin/ tools check before building anything, and how they end.

`check_run_paths` runs right after the configuration is parsed
(`cli.configure_or_exit`): the directories a tool writes (the trainer's and
the evaluator's model_dir, the exporter's export_dir) must be directories it
can write, and the input source the trainer or evaluator reads must have
files for the splits it reads (`train-*`, `validation-*` for
TFRecordSource). Each failure is one line, before a strategy or a model is
built.

`run` is the tools' `absl.app.run`: a mistake found later (a checkpoint that
does not exist, a full disk, a model_dir another trainer holds, a value
effnet_gin rejects) ends the tool with one line and exit status 1 too
(`config_errors.is_mistake`); a bug keeps its traceback.
"""
import functools
import os
import sys
import tempfile

from absl import app
import tensorflow as tf

from effnet_gin import config_errors

# The directories each tool writes, by flag name.
_WRITTEN_DIRS = {
    "train": ("model_dir",),
    "evaluate": ("model_dir",),
    "export": ("export_dir",),
}
# The splits each tool reads from its input source.
_READ_SPLITS = {"train": ("train",), "evaluate": ("eval",)}
_SPLIT_NAMES = {"train": "the training split", "eval": "the eval split"}


def run(main):
  """`absl.app.run(main)`, ending with one line on a person's mistake.

  Args:
    main: the tool's `main(argv)`.
  """
  app.run(functools.partial(_main_or_exit, main))


def _main_or_exit(main, argv):
  try:
    return main(argv)
  except Exception as error:  # pylint: disable=broad-except
    if not config_errors.is_mistake(error):
      raise
    sys.exit(f"{program_name()}: {config_errors.mistake_line(error)}")


def program_name():
  return os.path.basename(sys.argv[0]) or "effnet_gin"


def check_run_paths(flag_values, *, role, source=None, train_and_eval=False):
  """Checks the directories `role` writes and the files it reads.

  Args:
    flag_values: the parsed flags (`model_dir`, `export_dir` when defined).
    role: 'train', 'evaluate', 'export' or 'predict'.
    source: the input source the tool reads (built), or None.
    train_and_eval: the trainer evaluates in process (reads 'eval' too).

  Raises:
    config_errors.ConfigError: naming the directory and what is wrong
      with it.
    FileNotFoundError: the input source has no files for a split it reads.
  """
  for name in _WRITTEN_DIRS.get(role, ()):
    path = flag_values[name].value if name in flag_values else None
    if not path:
      continue
    if name == "export_dir":
      # The export is staged beside export_dir: its parent must be writable.
      check_existing_dir_or_absent(path, name)
      path = os.path.dirname(path.rstrip("/")) or "."
    check_writable_dir(path, name)
  if source is not None:
    splits = list(_READ_SPLITS.get(role, ()))
    if role == "train" and train_and_eval:
      splits.append("eval")
    check_source_files(source, splits)


def check_existing_dir_or_absent(path, what):
  """Raises ConfigError when `path` exists and is not a directory."""
  if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
    raise config_errors.ConfigError(
        f"{what} {path} is a file, not a directory: give a directory")


def check_writable_dir(path, what):
  """Creates directory `path` if needed and checks that it can be written.

  Local paths are checked by creating and deleting a file in them; remote
  ones (gs://) only by creating the directory.

  Raises:
    config_errors.ConfigError: `path` is a file, cannot be created, or is
      read-only (the message names it and why).
  """
  check_existing_dir_or_absent(path, what)
  try:
    tf.io.gfile.makedirs(path)
    if "://" not in path:
      with tempfile.NamedTemporaryFile(dir=path, prefix=".write_check_"):
        pass
  except (OSError, tf.errors.OpError) as err:
    reason = config_errors.mistake_line(err)
    if isinstance(err, OSError) and err.strerror:
      reason = err.strerror
    raise config_errors.ConfigError(
        f"{what} {path} is not writable ({reason}): give a directory this "
        "user can write") from None


def check_source_files(source, splits):
  """Checks that `source` has files for each of `splits`, if it has files.

  Raises:
    FileNotFoundError: naming the source's directory, the split and its
      file pattern.
  """
  files = getattr(source, "files", None)
  if files is None:
    return
  for split in splits:
    try:
      files(split)
    except FileNotFoundError as err:
      raise FileNotFoundError(f"{err} ({_SPLIT_NAMES[split]}): check "
                              "--data_dir") from None
