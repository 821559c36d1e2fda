"""Configuration mistakes, told in one line a person can act on.

gin reports a missing argument as Python's `TypeError` under a traceback, a
missing macro with the whole config appended, and a misspelt name without a
guess. The bin/ tools instead print one line and exit non-zero: what is
missing and which config usually provides it, the closest known name, and
the file and line where gin knows them.

The hints come from data, not from special cases: `ConfigFiles` reads the
shipped `.gin` files (and the user's) as text, so "which config binds
TRAIN_STEPS" and "is finetune.gin a base config or an addition" are answered
by what the files bind and include. This module does not import gin;
`effnet_gin.cli` passes in what gin knows (registered names, missing keys).

The same goes for a mistake found once the tool runs (`is_mistake`,
`mistake_line`): a checkpoint or directory that does not exist, a
read-only or full disk, a model_dir another trainer holds, a bad value
that effnet_gin's own checks reject. Those are a person's to fix and end
the tool with one line; anything else (a bug) keeps its traceback.
"""
import difflib
import errno
import os
import re
import tokenize

import tensorflow as tf

from effnet_gin.checkpoints import disk_space
from effnet_gin.checkpoints import run_lock


class ConfigError(ValueError):
  """A configuration mistake whose message is already one readable line."""


_BINDING_RE = re.compile(r"^\s*(?:[\w.]+/)*([\w.]+)\s*=")
_INCLUDE_RE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""")
_FILE_LOCATION_RE = re.compile(r'^\s*In file "([^"]+)", line (\d+)')
_STRING_LOCATION_RE = re.compile(r"^\s*In bindings string line (\d+)")
_UNKNOWN_PARAMETER_RE = re.compile(
    r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")
_UNKNOWN_CONFIGURABLE_RE = re.compile(
    r"No configurable matching (?:reference )?'@?([^'(]+)(?:\(\))?'")


class ConfigFiles:
  """The text of gin files, with their includes, to answer questions.

  Args:
    read: function path → text, or None when the file cannot be read.
    resolve: function (include name, including file) → path, or None.
  """

  def __init__(self, read, resolve):
    self._read = read
    self._resolve = resolve
    self._texts = {}

  def text(self, path):
    if path not in self._texts:
      self._texts[path] = self._read(path) or ""
    return self._texts[path]

  def includes(self, path):
    """The paths `path` includes directly."""
    names = (_INCLUDE_RE.match(line) for line in self.text(path).splitlines())
    paths = (self._resolve(match.group(1), path) for match in names if match)
    return [found for found in paths if found]

  def closure(self, path, seen=None):
    """`path` and every file it includes, transitively, in parse order."""
    seen = set() if seen is None else seen
    if path in seen:
      return []
    seen.add(path)
    result = []
    for included in self.includes(path):
      result += self.closure(included, seen)
    return result + [path]

  def binds(self, path, key):
    """Whether `path` or its includes bind `key` (a macro or selector.param)."""
    return any(
        _lhs_matches(match.group(1), key)
        for part in self.closure(path)
        for match in map(_BINDING_RE.match,
                         self.text(part).splitlines())
        if match)

  def find(self, paths, pattern):
    """The first (path, line number, line) matching regex `pattern`, or None."""
    for path in paths:
      for part in self.closure(path):
        for number, line in enumerate(self.text(part).splitlines(), 1):
          if re.search(pattern, line) and not line.lstrip().startswith("#"):
            return part, number, line.strip()
    return None

  def described(self, paths, name):
    """The header's description of `name`, as 'NAME (what it is)', or NAME."""
    pattern = re.compile(rf"{re.escape(name)} \(([^)]*)\)")
    for path in paths:
      for part in self.closure(path):
        match = pattern.search(self.text(part))
        if match:
          words = re.sub(r"\n\s*#", " ", match.group(1)).split()
          return f"{name} ({' '.join(words)})"
    return name


def _lhs_matches(lhs, key):
  return lhs == key or key.endswith("." + lhs)


def base_configs(files, shipped, key):
  """Shipped configs that bind `key` and that no other shipped file includes.

  Args:
    files: a `ConfigFiles`.
    shipped: paths of the shipped `.gin` files.
    key: a macro name or a `selector.param` binding key.

  Returns:
    Their base names, sorted.
  """
  included = {path for config in shipped for path in files.includes(config)}
  return sorted(
      os.path.basename(path)
      for path in shipped
      if path not in included and files.binds(path, key))


def _listed(names):
  names = list(names)
  if len(names) <= 1:
    return "".join(names)
  return ", ".join(names[:-1]) + " and " + names[-1]


def missing_arguments(selector, names, *, given, files, shipped, preferred):
  """Says which required arguments no file binds, and what to give first.

  Args:
    selector: the configurable, e.g. effnet_gin.train.train.
    names: its required parameters that are unbound.
    given: the `--gin_file` paths given.
    files: a `ConfigFiles`.
    shipped: paths of the shipped `.gin` files.
    preferred: the base config to name first (the one for this machine).

  Returns:
    The message, one line.
  """
  bases = base_configs(files, shipped, f"{selector}.{names[0]}")
  example = preferred if preferred in bases else (bases or ["?"])[0]
  shipped_names = {os.path.basename(path) for path in shipped}
  additions = [
      os.path.basename(path)
      for path in given
      if os.path.basename(path) in shipped_names and
      os.path.basename(path) not in bases
  ]
  if len(additions) == 1:
    what = f"{additions[0]} is an addition: give it after a base config"
  elif additions:
    what = f"{_listed(additions)} are additions: give them after a base config"
  else:
    what = "give a base config first"
  shown = ", ".join(bases[:6]) + (", …" if len(bases) > 6 else "")
  return (f"{selector} needs {_listed(names)}, which no --gin_file binds; "
          f"{what} such as {example} (base configs: {shown})")


def missing_macro(name, *, given, files, known=()):
  """Says that a macro is used but never set, and where it is used.

  Args:
    name: the macro, e.g. INIT_CHECKPOINT.
    given: the `--gin_file` paths given.
    files: a `ConfigFiles`.
    known: the macros that are set, for a misspelt name.

  Returns:
    The message, one line.
  """
  where = files.find(given, rf"%{re.escape(name)}\b")
  used = (f" ({os.path.basename(where[0])}:{where[1]}: {where[2]})"
          if where else "")
  guess = suggest(name, known)
  return (f"{files.described(given, name)} is used{used} but never set: "
          f"add --gin_param=\"{name} = ...\""
          f"{f' (or did you mean {guess}?)' if guess else ''}")


def suggest(word, candidates):
  """The closest of `candidates` to `word`, or None."""
  matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
  return matches[0] if matches else None


def _suggestion(first_line, known):
  """'; did you mean X?' for a gin unknown-name error, or ''."""
  match = _UNKNOWN_PARAMETER_RE.search(first_line)
  if match:
    selector = next((s for s in known if _lhs_matches(match.group(1), s)), None)
    guess = suggest(match.group(2), known.get(selector, ()))
  else:
    match = _UNKNOWN_CONFIGURABLE_RE.search(first_line)
    if not match:
      return ""
    short = {s.rsplit(".", 1)[-1]: s for s in known}
    name = match.group(1)
    guess = suggest(name, known if "." in name else short)
    guess = guess if "." in name or guess is None else short[guess]
  return f"; did you mean {guess!r}?" if guess else ""


def one_line(error, *, known=None):
  """Turns an exception from configuring into one line.

  Args:
    error: the exception (gin's parse errors carry their location, and for
      a command-line binding its text, on the following lines;
      `ConfigError`s are already one line).
    known: {registered selector: parameter names}, for suggestions.

  Returns:
    "[where: ]message[; did you mean 'name'?]".
  """
  if isinstance(error, tokenize.TokenError):
    return (f"gin cannot parse a binding: {error.args[0]} (a bracket or quote "
            "left open?)")
  if isinstance(error, SyntaxError) and error.filename:
    return f"{error.filename}:{error.lineno}: {error.msg.rstrip('.')}"
  lines = str(error).strip().splitlines() or [type(error).__name__]
  first = lines[0].strip().rstrip(":.")
  if first.startswith("No bindings specified for"):
    first = first.split(" in config string")[0]
  where = ""
  in_file = _FILE_LOCATION_RE.match(lines[1]) if len(lines) > 1 else None
  if in_file:
    where = f"{in_file.group(1)}:{in_file.group(2)}: "
  elif len(lines) > 2 and _STRING_LOCATION_RE.match(lines[1]):
    where = f"in {lines[2].strip()!r} (a flag or --gin_param): "
  return where + first + _suggestion(first, known or {})


# ---------------------------------------------------------------------------
# Mistakes found while a tool runs.
# ---------------------------------------------------------------------------

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Python's file errors that a person fixes (a path, a permission, a disk).
_FILE_MISTAKES = (FileNotFoundError, FileExistsError, NotADirectoryError,
                  IsADirectoryError, PermissionError)
_FILE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST)
# TensorFlow's file system errors of the same kinds.
_TF_FILE_MISTAKES = (tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
                     tf.errors.AlreadyExistsError)
_TF_FILE_TEXTS = ("Read-only file system", "Not a directory", "Is a directory")
_TF_PREFIX_RE = re.compile(r"^\{\{[^}]*\}\}\s*")


def _raised_in_effnet_gin(error):
  """Whether the innermost frame of `error`'s traceback is effnet_gin's."""
  traceback = error.__traceback__
  if traceback is None:
    return False
  while traceback.tb_next is not None:
    traceback = traceback.tb_next
  filename = os.path.abspath(traceback.tb_frame.f_code.co_filename)
  return filename.startswith(_PACKAGE_DIR + os.sep)


def is_mistake(error):
  """Whether `error`, raised while a tool runs, is a person's to fix.

  True for configuration errors, file errors (missing, existing, not a
  directory, no permission, read-only, full), a model_dir another trainer
  holds, and the `ValueError`s effnet_gin's own checks raise. False for
  anything else: a bug, whose traceback is wanted.
  """
  if isinstance(error, (ConfigError, run_lock.RunDirLocked)):
    return True
  if disk_space.is_out_of_space(error) or isinstance(error, _FILE_MISTAKES):
    return True
  if isinstance(error, OSError) and error.errno in _FILE_ERRNOS:
    return True
  if isinstance(error, _TF_FILE_MISTAKES):
    return True
  if isinstance(error, tf.errors.OpError) and any(
      text in error.message for text in _TF_FILE_TEXTS):
    return True
  return isinstance(error, ValueError) and _raised_in_effnet_gin(error)


def mistake_line(error):
  """The first line of a mistake's message, without TensorFlow's op prefix.

  gin appends "In call to configurable ..." lines to an exception raised
  through a configurable; TensorFlow prefixes its op errors with the
  function's name. Neither helps the reader.
  """
  if isinstance(error, tf.errors.OpError):
    text = _TF_PREFIX_RE.sub("", error.message)
  elif isinstance(error, OSError) and error.strerror and not isinstance(
      error, disk_space.OutOfSpaceError):
    text = (f"{error.strerror}: {error.filename}"
            if error.filename else str(error))
  else:
    text = str(error)
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  first = lines[0] if lines else type(error).__name__
  return first.split(" [Op:")[0]
