"""Stopping the training loop at the next step on SIGTERM.

A preemptible VM gets about 30 seconds between SIGTERM and SIGKILL, while one
call of the compiled host loop runs `steps_per_loop` steps (1,251 at the
reference settings: minutes). So the stop decision is read inside the loop,
before every step, from a `tf.Variable`.

Two surprises shape this module:
- A Python signal handler runs on the main thread only when the interpreter
  regains control, i.e. not while the main thread is inside a long
  `tf.function` call. Python's C-level handler does write the signal number
  to the `signal.set_wakeup_fd` descriptor at once, so a watcher thread
  blocked on that descriptor sets the variable while the loop runs.
- Under MultiWorkerMirroredStrategy only the signalled worker sees SIGTERM,
  and a worker that stops alone leaves the others blocked in the next
  collective. So there every step all-reduces the workers' flags (one scalar)
  and all of them stop before the same step.

`tf.distribute.experimental.PreemptionCheckpointHandler` does not fit this
loop: it decides once per `handler.run` call (its docs recommend single-step
calls for MultiWorkerMirrored), i.e. once per host loop here, and it learns
of SIGTERM through `signal.signal`, a main-thread handler that does not run
during the call.
"""
import contextlib
import os
import signal
import threading

from absl import logging
import tensorflow as tf


class StopRequest:
  """A stop flag set by SIGTERM and read by the compiled loop every step.

  Create it after the strategy (a variable created earlier would initialise
  TensorFlow before MultiWorkerMirroredStrategy can configure it), then wrap
  the training in `installed()` and call `agreed(strategy)` inside the loop.
  """

  def __init__(self):
    self._flag = tf.Variable(0.0, trainable=False, name="stop_requested")

  def request(self, reason):
    """Asks the loop to stop before its next step (safe from any thread)."""
    logging.warning("%s: stopping before the next step to checkpoint", reason)
    self._flag.assign(1.0)

  @property
  def requested(self):
    """Whether this process was asked to stop (its own flag only)."""
    return bool(self._flag.numpy() > 0)

  def agreed(self, strategy):
    """In the host loop: a bool tensor, True when any worker was asked.

    Single-client strategies (default, Mirrored, TPU: the host loop runs on
    the host) read the flag; MultiWorkerMirrored sums the workers' flags, so
    every worker gets the same answer at the same step.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
      votes = strategy.run(self._flag.read_value)
      return strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0
    return self._flag.read_value() > 0

  @contextlib.contextmanager
  def installed(self):
    """Routes SIGTERM to `request` while the block runs, then restores.

    Outside the main thread signals cannot be handled; the block then runs
    without (the caller's own SIGTERM handling applies).
    """
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    # The Python-level handler has nothing left to do (the watcher acts),
    # but one must be installed for the wakeup descriptor to be written.
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: None)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=self._watch, args=(read_fd,),
                               name="sigterm_watcher", daemon=True)
    watcher.start()
    try:
      yield self
    finally:
      signal.set_wakeup_fd(previous_fd)
      signal.signal(signal.SIGTERM, previous_handler)
      os.close(write_fd)  # The watcher reads end-of-file and returns.
      watcher.join()
      os.close(read_fd)

  def _watch(self, read_fd):
    """Reads signal numbers from the wakeup descriptor until it closes."""
    while True:
      received = os.read(read_fd, 64)
      if not received:
        return
      if signal.SIGTERM in received:
        self.request("SIGTERM received")
