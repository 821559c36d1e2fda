"""Training durations in epochs, turned into the step counts the loop runs.

The reference states its recipe in epochs (350 of training, warm-up 5, decay
every 2.4, evaluation every 10) and hard-codes the step counts for batch 2048
(`--train_steps=218949`, `--steps_per_eval=6255`). A run at another batch size
needs other counts; gin cannot do arithmetic, so the shipped configs bind
each count to `steps_for_epochs`, which gin calls when the count is injected:

    TRAIN_STEPS = @total/effnet_gin.train.steps_for_epochs()
    total/effnet_gin.train.steps_for_epochs.epochs = %TRAIN_EPOCHS

An explicit `TRAIN_STEPS = 1000` (or `--train_steps=1000`) replaces the
derived value everywhere it is used (trainer and evaluator alike).

`Durations` gathers what a run will actually do, for the log line at start.
"""
import dataclasses
from typing import Optional


def steps_per_epoch(num_train_images, global_batch_size):
  """Steps in one pass over the training set (not rounded), as the reference.

  Raises:
    ValueError: if either size is not a positive number.
  """
  for name, value in (("num_train_images", num_train_images),
                      ("global_batch_size", global_batch_size)):
    if isinstance(value, bool) or not isinstance(value,
                                                 (int, float)) or (value <= 0):
      raise ValueError(f"{name} must be a positive number, got {value!r}")
  return num_train_images / global_batch_size


def steps_for_epochs(*, epochs, num_train_images, global_batch_size):
  """The whole number of steps in `epochs` epochs: int(epochs × images / batch).

  Truncation is the reference's: 350 epochs of 1,281,167 images at batch
  2048 are 218,949.4 steps and it trains 218,949; 10 epochs are its
  `steps_per_eval` of 6,255.

  Args:
    epochs: a positive number of epochs (may be fractional).
    num_train_images: size of the training set.
    global_batch_size: examples per step over all replicas.

  Returns:
    An int >= 1.

  Raises:
    ValueError: for a non-positive value.
  """
  per_epoch = steps_per_epoch(num_train_images, global_batch_size)
  if isinstance(epochs, bool) or not isinstance(epochs,
                                                (int, float)) or (epochs <= 0):
    raise ValueError(f"steps_for_epochs.epochs must be a positive number, got "
                     f"{epochs!r}")
  return max(1, int(epochs * per_epoch))


@dataclasses.dataclass(frozen=True)
class Durations:
  """The step counts of one run and their length in epochs.

  Attributes:
    train_steps: total optimizer steps.
    steps_per_epoch: num_train_images / global batch (not rounded).
    warmup_steps: linear warm-up steps of the learning-rate schedule.
    decay_steps: steps between exponential decays (None for other kinds).
    steps_per_eval: steps between in-process evaluations (None: none).
    checkpoint_every_steps: steps between checkpoints.
    steps_per_loop: steps compiled into one host call.
  """
  train_steps: int
  steps_per_epoch: float
  warmup_steps: int
  decay_steps: Optional[float]
  steps_per_eval: Optional[int]
  checkpoint_every_steps: int
  steps_per_loop: int

  def epochs(self, steps):
    """`steps` expressed in epochs."""
    return steps / self.steps_per_epoch

  def describe(self):
    """One log line with every count and its length in epochs."""
    parts = [
        f"{self.train_steps} train steps "
        f"({self.epochs(self.train_steps):.2f} epochs of "
        f"{self.steps_per_epoch:.2f} steps)",
        f"warm-up {self.warmup_steps} steps "
        f"({self.epochs(self.warmup_steps):.2f} epochs)"
    ]
    if self.decay_steps:
      parts.append(f"decay every {self.decay_steps:.2f} steps "
                   f"({self.epochs(self.decay_steps):.2f} epochs)")
    if self.steps_per_eval:
      parts.append(f"eval every {self.steps_per_eval} steps "
                   f"({self.epochs(self.steps_per_eval):.2f} epochs)")
    parts.append(f"checkpoint every {self.checkpoint_every_steps} steps "
                 f"({self.epochs(self.checkpoint_every_steps):.2f} epochs)")
    parts.append(f"{self.steps_per_loop} steps per loop")
    return "; ".join(parts)


def durations_of(*, train_steps, num_train_images, global_batch_size, schedule,
                 steps_per_eval, checkpoint_every_steps, steps_per_loop):
  """Collects a run's durations; `schedule` is a `WarmupDecaySchedule`.

  `checkpoint_every_steps=None` means every loop, as in `train`.
  """
  decay_steps = schedule.decay_steps if schedule.kind == "exponential" else None
  return Durations(
      train_steps=int(train_steps),
      steps_per_epoch=steps_per_epoch(num_train_images, global_batch_size),
      warmup_steps=schedule.warmup_steps, decay_steps=decay_steps,
      steps_per_eval=steps_per_eval,
      checkpoint_every_steps=checkpoint_every_steps or steps_per_loop,
      steps_per_loop=steps_per_loop)
