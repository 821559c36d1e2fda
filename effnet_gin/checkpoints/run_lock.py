"""One trainer per model_dir: the run lock, model_dir/run.lock.

A trainer's chief creates the lock before it builds its strategy (a refused
trainer must not initialise the TPU the holder trains on) or writes anything
into model_dir, and removes it when the run ends: normally, after a SIGTERM
(the trainer saves and returns), or on an exception. Non-chief workers of a
multi-worker cluster never touch it. The file is one JSON object: the holder's `host`,
`pid`, `since` (when it took the lock) and `heartbeat`, which a background
thread of the holder rewrites every `HEARTBEAT_SECONDS`.

A second trainer that finds the lock refuses to start (`RunDirLocked`, one
line naming the holder), unless the lock is stale, in which case it takes
the lock over and logs whose it was and why:

  * the holder ran on this host and its pid is no longer alive (a trainer
    killed by SIGKILL or OOM); or
  * the holder's heartbeat is older than `STALE_AFTER_SECONDS` (a holder on
    another host that died with its VM, or a pid reused by an unrelated
    process on this host). The heartbeat thread keeps running through long
    host loops and evaluations, so a live trainer's lock never goes stale;
    the timeout assumes the hosts' clocks agree to well within it.

Local paths: the lock is created with `os.open(O_CREAT | O_EXCL)`, atomic on
local file systems, so of two trainers starting together exactly one wins.
A stale lock is first renamed away (atomic) and checked to be the one judged
stale before it is deleted, so two restarts racing for it cannot both win.

Remote paths (gs:// and the other `tf.io.gfile` file systems): there is no
exclusive create in `tf.io.gfile`, so the lock is best effort: check, write,
then read back. It catches a second trainer started while the first runs
(the common mistake: a job restarted while the old one still lives), but two
trainers started within the same second may both proceed. A holder whose
heartbeat finds someone else's lock logs an error each time it looks.
"""
import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
import tensorflow as tf

from effnet_gin.checkpoints import run_dir

# How often the holder rewrites its heartbeat, and how old a heartbeat must
# be before another trainer may take the lock over.
HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0

# A lock file that is not yet (or no longer) valid JSON: the creator writes it
# right after creating it, so only one this old is treated as abandoned.
_UNREADABLE_GRACE_SECONDS = 10.0

# Tokens of the locks this process holds: a lock with this process's pid and
# another token was left by an earlier process that had the same pid.
_HELD_HERE = set()


class RunDirLocked(RuntimeError):
  """Another live trainer holds model_dir's run lock."""


def _is_local(path):
  return "://" not in path


def _pid_alive(pid):
  """Whether process `pid` exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, but someone else's.
    return True
  return True


def _utc(seconds):
  return datetime.datetime.fromtimestamp(
      seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(holder):
  """One phrase naming a lock's holder: host, pid, since when, heartbeat."""
  age = time.time() - holder["heartbeat"]
  return (f"host {holder['host']}, pid {holder['pid']}, since "
          f"{_utc(holder['since'])} (last heartbeat {age:.0f} s ago)")


class RunLock:
  """The run lock of one model_dir, taken by `acquire`, dropped by `release`.

  Args:
    model_dir: the run directory (local or remote); it must exist.
    heartbeat_seconds: how often the holder refreshes its heartbeat.
    stale_after_seconds: how old another holder's heartbeat must be for
      this one to take the lock over.
  """

  def __init__(self, model_dir, *, heartbeat_seconds=HEARTBEAT_SECONDS,
               stale_after_seconds=STALE_AFTER_SECONDS):
    self.model_dir = model_dir
    self.path = run_dir.path(model_dir, run_dir.RUN_LOCK_FILE)
    self._heartbeat_seconds = heartbeat_seconds
    self._stale_after = stale_after_seconds
    now = time.time()
    self._holder = dict(host=socket.gethostname(), pid=os.getpid(), since=now,
                        heartbeat=now, token=uuid.uuid4().hex)
    self._stop = threading.Event()
    self._thread = None

  def acquire(self):
    """Takes the lock, over a stale one if need be; returns self.

    Raises:
      RunDirLocked: a live trainer holds it (the message names it).
    """
    for _ in range(3):
      if self._create():
        break
      holder = self._read()
      reason = self._stale_reason(holder)
      if reason is None:
        who = describe(holder) if holder else "its lock is being written"
        raise RunDirLocked(f"model_dir {self.model_dir} is in use by another "
                           f"trainer: {who}; stop it first, or delete "
                           f"{self.path} if it is gone")
      if self._remove_stale(holder):
        logging.warning("Taking over the run lock %s: %s", self.path, reason)
    else:
      raise RunDirLocked(f"model_dir {self.model_dir}: could not take the "
                         f"run lock {self.path}, other trainers keep taking it")
    _HELD_HERE.add(self._holder["token"])
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name="run_lock_heartbeat")
    self._thread.start()
    logging.info("Holding the run lock %s", self.path)
    return self

  def release(self):
    """Stops the heartbeat and removes the lock if it is still this one's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    _HELD_HERE.discard(self._holder["token"])
    try:
      if self._owns():
        tf.io.gfile.remove(self.path)
    except (OSError, tf.errors.OpError) as err:
      logging.error("Could not remove the run lock %s: %s", self.path, err)

  def _text(self):
    return json.dumps(self._holder) + "\n"

  def _create(self):
    """Creates the lock file with this holder; False if it exists."""
    if not _is_local(self.path):
      if tf.io.gfile.exists(self.path):
        return False
      run_dir.write_text(self.model_dir, run_dir.RUN_LOCK_FILE, self._text())
      return self._owns()  # Read back: the last of two writers wins.
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._text())
      f.flush()
      os.fsync(f.fileno())
    return True

  def _read(self, path=None):
    """The holder recorded in the lock file, {} if unreadable, None if gone."""
    path = path or self.path
    try:
      with tf.io.gfile.GFile(path) as f:
        text = f.read()
    except tf.errors.NotFoundError:
      return None
    try:
      holder = json.loads(text)
      holder = {
          k: holder[k] for k in ("host", "pid", "since", "heartbeat", "token")
      }
    except (ValueError, KeyError, TypeError):
      return {}
    numbers = [holder["since"], holder["heartbeat"]]
    if not (isinstance(holder["pid"], int) and
            all(isinstance(n, (int, float)) for n in numbers)):
      return {}
    return holder

  def _owns(self):
    holder = self._read()
    return bool(holder) and holder["token"] == self._holder["token"]

  def _stale_reason(self, holder):
    """Why `holder`'s lock may be taken over, or None when it may not."""
    if holder is None:
      return "it vanished while being read"
    if not holder:
      try:
        age = time.time() - tf.io.gfile.stat(self.path).mtime_nsec / 1e9
      except tf.errors.NotFoundError:
        return "it vanished while being read"
      if age > _UNREADABLE_GRACE_SECONDS:
        return f"it is not a lock a trainer wrote (written {age:.0f} s ago)"
      return None
    age = time.time() - holder["heartbeat"]
    if holder["host"] == self._holder["host"]:
      if not _pid_alive(holder["pid"]):
        return (f"its trainer ({describe(holder)}) is no longer running on "
                "this host")
      if (holder["pid"] == os.getpid() and holder["token"] not in _HELD_HERE):
        return (f"it was left by an earlier process with this pid "
                f"({describe(holder)})")
    if age > self._stale_after:
      return (f"its holder ({describe(holder)}) has not refreshed it for "
              f"over {self._stale_after:.0f} s")
    return None

  def _remove_stale(self, holder):
    """Removes the lock judged stale; False if it changed in the meantime."""
    if not _is_local(self.path):
      tf.io.gfile.remove(self.path)
      return True
    aside = f"{self.path}.stale-{self._holder['token']}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False  # Another restart took it away first.
    judged = self._read(aside) == holder
    if not judged:
      # A racing trainer's fresh lock: put it back unless a newer one exists.
      with contextlib.suppress(FileExistsError):
        os.link(aside, self.path)
    os.remove(aside)
    return judged

  def _beat(self):
    """The heartbeat thread: rewrites the lock's heartbeat until release."""
    while not self._stop.wait(self._heartbeat_seconds):
      try:
        if not self._owns():
          logging.error(
              "The run lock %s is no longer this trainer's (%s): another "
              "trainer may be writing to %s", self.path,
              describe(self._read() or self._holder), self.model_dir)
          continue
        self._holder["heartbeat"] = time.time()
        run_dir.write_text(self.model_dir, run_dir.RUN_LOCK_FILE, self._text())
      except (OSError, tf.errors.OpError) as err:
        logging.warning("Could not refresh the run lock %s: %s", self.path, err)


@contextlib.contextmanager
def holding(model_dir, *, enabled=True, **kwargs):
  """Holds model_dir's run lock for the `with` block (if `enabled`).

  Args:
    model_dir: the run directory; it must exist.
    enabled: False holds nothing (a multi-worker cluster's non-chief).
    **kwargs: `RunLock`'s timing arguments.

  Yields:
    The `RunLock`, or None when not enabled.

  Raises:
    RunDirLocked: a live trainer holds the lock.
  """
  if not enabled:
    yield None
    return
  lock = RunLock(model_dir, **kwargs).acquire()
  try:
    yield lock
  finally:
    lock.release()
