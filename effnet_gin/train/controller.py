"""The Python loop around the compiled host loop (see `trainer.train`).

After each host loop: the console line and TensorBoard scalars, the NaN
check, the operative config (after the first), checkpoints, in-process
evaluations, and the stop on SIGTERM.
"""
import dataclasses
import math
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import tensorflow as tf

from effnet_gin.checkpoints import run_dir


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN or Inf."""


@dataclasses.dataclass(frozen=True)
class Segment:
  """Steps up to `end_step` run by one host loop over one iterator.

  Attributes:
    end_step: the global step the segment ends at; the next segment (if
      any) takes over from there.
    start: `start(step)` builds `(host_loop, iterator)` when training
      enters the segment at `step` (once; inside the summary writer).
  """
  end_step: int
  start: Callable[[int], tuple]


@dataclasses.dataclass(frozen=True)
class Controller:
  """The Python loop around the host loop: log, checkpoint, evaluate, stop.

  Attributes:
    segments: the `Segment`s of the run in step order (progressive learning's
      stages; one segment otherwise), each with its host loop (from
      `train_step.build_host_loop`) and distributed iterator.
    step: the global step variable (the optimizer's iterations).
    manager: the `checkpointing.Manager` that saves the run.
    progress: the `progress.LoopProgress` that logs each loop.
    model_dir: the run's directory.
    chief: whether this process writes summaries and configs.
    operative_config_text: zero-argument callable giving the operative
      config to record after the first loop, or None.
  """
  segments: Sequence[Segment]
  step: Any
  manager: Any
  progress: Any
  model_dir: str
  chief: bool
  operative_config_text: Optional[Callable[[], str]]

  def run(self, *, start_step, train_steps, steps_per_loop, checkpoint_every,
          steps_per_eval, evaluate_at, resumed, stop_request):
    """Trains from start_step to train_steps, or until SIGTERM.

    Args:
      start_step: the step training starts (or resumes) at.
      train_steps: the final step.
      steps_per_loop: steps per host loop.
      checkpoint_every: steps between checkpoints (rounded up to loops).
      steps_per_eval: steps between evaluations (rounded up to loops).
      evaluate_at: `evaluate_at(step, checkpoint)` evaluates in-process
        (recording the result against the saved `checkpoint` of that step)
        and returns the metrics; None never evaluates.
      resumed: whether start_step was restored from a checkpoint (so it need
        not be saved again).
      stop_request: the `preemption.StopRequest` the host loop reads.

    Returns:
      A dict with `start_step`, the final `step`, the last loop's mean
      `loss`, `preempted` and `eval` (the last evaluation's metrics, or
      None).
    """
    saved_step = start_step if resumed else None
    summaries_dir = run_dir.path(self.model_dir, run_dir.TRAIN_SUMMARIES_DIR)
    writer = (tf.summary.create_file_writer(summaries_dir)
              if self.chief else tf.summary.create_noop_writer())
    last_loss, last_eval = None, None
    next_checkpoint = next_multiple(start_step, checkpoint_every)
    next_eval = next_multiple(start_step, steps_per_eval)
    current = start_step
    wrote_operative_config = False
    segment, loop = None, None
    with stop_request.installed(), writer.as_default():
      while current < train_steps:
        if segment is None or current >= segment.end_step:
          segment = next(s for s in self.segments if current < s.end_step)
          loop = segment.start(current)
        num_steps = min(steps_per_loop, segment.end_step - current)
        current, steps_run, loss = self._run_host_loop(loop, current, num_steps)
        last_loss = loss if steps_run else last_loss
        # After the first loop that ran: a loop of only skipped (mixed_float16)
        # updates leaves the step where it was, so the step cannot tell.
        if steps_run and not wrote_operative_config:
          wrote_operative_config = True
          self._write_operative_config(current)
        # A loop cut short was stopped by a worker's SIGTERM; every worker
        # agreed on the step (see preemption), so all of them take this path.
        if steps_run < num_steps:
          if saved_step != current:
            self.manager.save(current)
          logging.warning(
              "Stopped by SIGTERM at step %d; rerun with the "
              "same model_dir to resume", current)
          return dict(start_step=start_step, step=current, loss=last_loss,
                      preempted=True, eval=last_eval)
        if current >= next_checkpoint or current >= train_steps:
          self.manager.save(current)
          saved_step = current
          next_checkpoint = next_multiple(current, checkpoint_every)
        if evaluate_at and (current >= next_eval or current >= train_steps):
          if saved_step != current:  # A result names a checkpoint that exists.
            self.manager.save(current)
            saved_step = current
          last_eval = evaluate_at(current, self.manager.checkpoint)
          next_eval = next_multiple(current, steps_per_eval)
        writer.flush()
    return dict(start_step=start_step, step=current, loss=last_loss,
                preempted=False, eval=last_eval)

  def _run_host_loop(self, loop, current, num_steps):
    """Runs and logs one host loop, `loop` = (host_loop, iterator).

    Returns:
      (the step reached, the steps run, their mean loss or None).

    Raises:
      NonFiniteLossError: when a step's loss was not finite.
    """
    loop_start = time.time()
    host_loop, iterator = loop
    loss_sum, correct_sum, first_bad, steps_run = host_loop(
        iterator, tf.constant(num_steps, tf.int32))
    loss_sum, steps_run = float(loss_sum), int(steps_run)
    elapsed = time.time() - loop_start
    if int(first_bad) >= 0 or not math.isfinite(loss_sum):
      raise NonFiniteLossError(
          f"training loss became {loss_sum} at step {int(first_bad)} "
          f"(loop of steps {current + 1}–{current + steps_run}); the last "
          f"checkpoint in {self.model_dir} ({self.manager.latest}) is "
          "intact")
    reached = int(self.step.numpy())
    loss = None
    if steps_run:
      loss = self.progress.log(reached, steps_run, loss_sum, float(correct_sum),
                               elapsed)
    return reached, steps_run, loss

  def _write_operative_config(self, current):
    """Records the configuration the run used, once it is complete."""
    if not self.chief or self.operative_config_text is None:
      return
    operative = self.operative_config_text()
    run_dir.write_text(self.model_dir, run_dir.OPERATIVE_CONFIG_FILE, operative)
    tf.summary.text("operative_config", markdown_code(operative), step=current)


def next_multiple(value, period):
  return (value // period + 1) * period


def markdown_code(text):
  return "\n".join("    " + line for line in text.splitlines())
