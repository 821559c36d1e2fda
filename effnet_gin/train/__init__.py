"""Training: strategy, optimizer, loop, evaluation and export."""
from effnet_gin.train.evaluate import evaluate
from effnet_gin.train.eval_runner import run_evaluation
from effnet_gin.train.export import export
from effnet_gin.train.loop import PREEMPTED_EXIT_CODE
from effnet_gin.train.loop import train
from effnet_gin.train.averaging import ExponentialMovingAverage
from effnet_gin.train.optim import build_optimizer
from effnet_gin.train.optim import build_schedule
from effnet_gin.train.recipe import steps_for_epochs
from effnet_gin.train.strategy import build_strategy
