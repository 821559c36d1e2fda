"""bin/trainer as real processes: kills, SIGTERM, and multi-worker training."""
import json
import os
import re
import signal
import socket

import pytest
import tensorflow as tf

from effnet_gin.checkpoints import run_dir
import trainer_helpers


def test_killed_trainer_resumes_to_the_right_step(tmp_path):
  model_dir, log_path = tmp_path / "model", tmp_path / "log"
  params = ("TRAIN_STEPS = 200", "effnet_gin.train.train.mode = 'train'",
            "effnet_gin.train.train.checkpoint_every_steps = 10")
  process = trainer_helpers.start_logged(model_dir, log_path, *params)
  try:
    killed_after = trainer_helpers.wait_until(
        lambda: trainer_helpers.latest_step(str(model_dir)), process, log_path,
        "a first checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
  finally:
    process.kill()
  assert process.returncode == -signal.SIGKILL
  assert trainer_helpers.latest_step(str(model_dir)) < 200
  rerun = trainer_helpers.run_trainer(str(model_dir), *params)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert trainer_helpers.latest_step(str(model_dir)) == 200
  # The rerun started at a checkpoint at or after the one we saw.
  resumed_at = int(
      rerun.stderr.split("Resumed from")[1].split("at step ")[1].split()[0])
  assert killed_after <= resumed_at < 200


# One host loop of 1000 steps takes far longer than a preemption's grace
# period; the in-loop progress line every 20 steps shows the loop is running.
_LONG_LOOP = ("TRAIN_STEPS = 5000", "STEPS_PER_LOOP = 1000",
              "effnet_gin.train.train.mode = 'train'",
              "effnet_gin.train.train.log_every_steps = 20")


def _checkpoint_step_variable(model_dir, step):
  reader = tf.train.load_checkpoint(f"{model_dir}/ckpt-{step}")
  return reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")


def test_sigterm_stops_a_long_loop_at_the_next_step(tmp_path):
  model_dir, log_path = tmp_path / "model", tmp_path / "log"
  process = trainer_helpers.start_logged(model_dir, log_path, *_LONG_LOOP)
  try:
    seen = trainer_helpers.wait_until(
        lambda: trainer_helpers.in_loop_step(log_path, 40), process, log_path,
        "step 40 inside the first loop")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
  finally:
    process.kill()
  log = log_path.read_text()
  assert process.returncode == 75, log[-3000:]
  # The preempted trainer released model_dir's run lock on its way out.
  assert not (model_dir / run_dir.RUN_LOCK_FILE).exists()
  stopped_at = trainer_helpers.stopped_step(log)
  # Stopped inside the loop (it would have ended at step 1000), after the
  # step the test saw, and saved exactly that step.
  assert seen <= stopped_at < 1000
  assert trainer_helpers.latest_step(str(model_dir)) == stopped_at
  assert _checkpoint_step_variable(model_dir, stopped_at) == stopped_at
  final = stopped_at + 3
  rerun = trainer_helpers.run_trainer(str(model_dir), f"TRAIN_STEPS = {final}",
                                      *_LONG_LOOP[1:])
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"ckpt-{stopped_at} at step {stopped_at}" in rerun.stderr
  assert f"step {final}/{final} " in rerun.stderr
  assert trainer_helpers.latest_step(str(model_dir)) == final
  assert _checkpoint_step_variable(model_dir, final) == final


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_workers(model_dir, log_dir, *params):
  """Starts two MultiWorkerMirrored bin/trainer workers on 127.0.0.1."""
  cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(2)]}
  workers = []
  for index in range(2):
    env = trainer_helpers.subprocess_env(TF_CONFIG=json.dumps({
        "cluster": cluster,
        "task": {
            "type": "worker",
            "index": index
        }
    }))
    log_path = log_dir / f"worker{index}.log"
    workers.append((trainer_helpers.start_logged(
        model_dir, log_path, *params, "effnet_gin.train.build_strategy.kind = "
        "'multi_worker'", env=env), log_path))
  return workers


def _wait_for_workers(workers, timeout=300):
  """Waits for every worker to exit; returns their logs."""
  try:
    for process, _ in workers:
      process.wait(timeout=timeout)
  finally:
    for process, _ in workers:
      process.kill()
  return [log_path.read_text() for _, log_path in workers]


def _assert_only_the_chief_wrote(model_dir):
  leftovers = [
      name for name in os.listdir(model_dir)
      if name.startswith(".worker_scratch")
  ]
  assert leftovers == []


def _in_loop_losses(log):
  """The (step, loss) pairs a trainer printed from inside its host loop."""
  return re.findall(r"in-loop progress: step (\d+) loss (\S+)", log)


@pytest.mark.slow  # Two processes tracing under MultiWorkerMirrored.
def test_multi_worker_mirrored_trains_in_sync_and_the_chief_saves(tmp_path):
  model_dir = tmp_path / "model"
  workers = _start_workers(model_dir, tmp_path, "TRAIN_STEPS = 3",
                           "STEPS_PER_LOOP = 3", "TRAIN_BATCH_SIZE = 8",
                           "effnet_gin.train.train.mode = 'train'",
                           "effnet_gin.train.train.log_every_steps = 1")
  logs = _wait_for_workers(workers)
  for index, ((process, _), log) in enumerate(zip(workers, logs)):
    assert process.returncode == 0, log[-3000:]
    # TensorFlow's own account of the cluster each process joined: two
    # workers of one CPU each, i.e. 2 replicas in sync.
    assert re.search(
        rf"task_id = {index}, num_workers = 2, "
        r"local_devices = \('[^']+',\)", log), log[-3000:]
  # Unseeded weights: the same loss on both workers at every step takes one
  # synchronous computation (initial weights broadcast from the chief,
  # gradients and losses all-reduced).
  losses = [_in_loop_losses(log) for log in logs]
  assert [step for step, _ in losses[0]] == ["1", "2", "3"]
  assert losses[1] == losses[0]
  # One checkpoint, the chief's; the other worker's copy went to a scratch
  # directory that is gone.
  assert run_dir.listed_checkpoints(
      str(model_dir)) == [str(model_dir / "ckpt-3")]
  assert sorted(
      name for name in os.listdir(model_dir) if name.startswith("ckpt")) == [
          "ckpt-3.data-00000-of-00001", "ckpt-3.index"
      ]
  assert "Saved checkpoint" in logs[0] and "Saved checkpoint" not in logs[1]
  _assert_only_the_chief_wrote(model_dir)
  assert (model_dir / "command").exists()
  assert _checkpoint_step_variable(model_dir, 3) == 3


@pytest.mark.slow  # Two 2-worker runs: tracing under MultiWorkerMirrored.
def test_multi_worker_sigterm_to_one_worker_stops_both_at_one_step(tmp_path):
  model_dir = tmp_path / "model"
  workers = _start_workers(model_dir, tmp_path, *_LONG_LOOP)
  signalled, signalled_log = workers[1]  # Not the chief, which must save.
  trainer_helpers.wait_until(
      lambda: trainer_helpers.in_loop_step(signalled_log, 40), signalled,
      signalled_log, "step 40 inside the first loop")
  signalled.send_signal(signal.SIGTERM)
  logs = _wait_for_workers(workers, timeout=120)
  for (process, _), log in zip(workers, logs):
    assert process.returncode == 75, log[-3000:]
  stopped_at = trainer_helpers.stopped_step(logs[0])
  assert trainer_helpers.stopped_step(logs[1]) == stopped_at < 1000
  assert "SIGTERM received" in logs[1] and "SIGTERM received" not in logs[0]
  assert trainer_helpers.latest_step(str(model_dir)) == stopped_at
  assert _checkpoint_step_variable(model_dir, stopped_at) == stopped_at
  _assert_only_the_chief_wrote(model_dir)
  final = stopped_at + 2
  (tmp_path / "rerun").mkdir()
  rerun = _start_workers(model_dir, tmp_path / "rerun",
                         f"TRAIN_STEPS = {final}", *_LONG_LOOP[1:])
  logs = _wait_for_workers(rerun)
  for (process, _), log in zip(rerun, logs):
    assert process.returncode == 0, log[-3000:]
    assert f"ckpt-{stopped_at} at step {stopped_at}" in log
  assert trainer_helpers.latest_step(str(model_dir)) == final
  assert _checkpoint_step_variable(model_dir, final) == final
