"""Training: the trainer and what it drives.

  trainer      `train`, what bin/trainer runs: wires strategy, model,
               optimizer, EMA, checkpoints and the input pipeline, then hands
               them to the controller.
  train_step   the compiled train step and the host loop of `steps_per_loop`
               steps around it (one `tf.function`).
  controller   the Python loop between host loops: logs, summaries, the NaN
               check, checkpoints, in-process evaluation, the stop on SIGTERM.
  preemption   the SIGTERM watcher whose flag the host loop reads.
  optim, lars  the learning-rate schedule and the optimizers.
  losses       the loss and weight decay.
  durations    epochs to steps.
  progress     step timing and images/sec.

Data flows from data/ into the step; weights go to checkpoints/; the
in-process evaluation is evaluation/'s.
"""
from effnet_gin.train.durations import steps_for_epochs
from effnet_gin.train.optim import build_optimizer
from effnet_gin.train.optim import build_schedule
from effnet_gin.train.trainer import PREEMPTED_EXIT_CODE
from effnet_gin.train.trainer import train
