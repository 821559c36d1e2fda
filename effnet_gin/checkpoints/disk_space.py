"""A full disk, told in one line: what could not be written, and what it needs.

TensorFlow's file layer (`tf.io.gfile`, checkpoint and SavedModel writers)
turns ENOSPC into `tf.errors.ResourceExhaustedError` with "No space left on
device" in its message; Python's own writes raise `OSError` with errno
ENOSPC (or EDQUOT, a quota). `is_out_of_space` recognises exactly those, and
the writers of a run (checkpoints, the evaluator's records, exports) turn
them into an `OutOfSpaceError` that names the directory, what was being
written and roughly how many bytes it takes, after putting back what the
failed write had changed.
"""
import errno
import shutil

import tensorflow as tf

_OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_OUT_OF_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded")

# What writing can raise when the disk is full (then check `is_out_of_space`).
WRITE_ERRORS = (tf.errors.ResourceExhaustedError, tf.errors.UnknownError,
                OSError)


class OutOfSpaceError(OSError):
  """A write failed for lack of space; the message is one readable line."""

  def __init__(self, message):
    super().__init__(errno.ENOSPC, message)

  def __str__(self):
    return self.strerror


def is_out_of_space(err):
  """Whether exception `err` reports a full disk (or an exceeded quota)."""
  if isinstance(err, OutOfSpaceError):
    return True
  if isinstance(err, OSError) and err.errno in _OUT_OF_SPACE_ERRNOS:
    return True
  if isinstance(
      err, (tf.errors.ResourceExhaustedError, tf.errors.UnknownError, OSError)):
    return any(text in str(err) for text in _OUT_OF_SPACE_TEXTS)
  return False


def files_size(pattern):
  """Total bytes of the files matching glob `pattern` (0 if none)."""
  try:
    return sum(
        tf.io.gfile.stat(name).length for name in tf.io.gfile.glob(pattern))
  except (tf.errors.OpError, OSError):
    return 0


def tree_size(directory):
  """Total bytes of the files under `directory` (0 if it is gone)."""
  total = 0
  try:
    for root, _, names in tf.io.gfile.walk(directory):
      total += sum(tf.io.gfile.stat(f"{root}/{name}").length for name in names)
  except (tf.errors.OpError, OSError):
    pass
  return total


def free_bytes(path):
  """Free bytes on the local file system holding `path`, or None (remote)."""
  if "://" in path:
    return None
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def human(num_bytes):
  """1536 -> '1.5 KB'."""
  size = float(num_bytes)
  for unit in ("bytes", "KB", "MB", "GB", "TB"):
    if size < 1024 or unit == "TB":
      return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
    size /= 1024
  return f"{size:.1f} TB"


def describe_need(directory, need_bytes):
  """'needs about X, Y free' for `directory` (X unknown when need_bytes=0)."""
  free = free_bytes(directory)
  need = f"about {human(need_bytes)}" if need_bytes else "more space"
  return need + (f", {human(free)} free" if free is not None else "")
