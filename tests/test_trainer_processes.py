"""bin/trainer as real processes: kills, SIGTERM, and multi-worker training."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest
import tensorflow as tf

import trainer_helpers


def _wait_until(condition, process, log_path, what, timeout=240):
  """Polls `condition()` until true; fails if the trainer exits first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = condition()
    if value:
      return value
    if process.poll() is not None:
      raise AssertionError(f"trainer exited ({process.returncode}) before "
                           f"{what}:\n{log_path.read_text()[-3000:]}")
    time.sleep(0.1)
  raise AssertionError(f"no {what} within {timeout}s")


def _start(model_dir, log_path, *params):
  """Starts bin/trainer with its log in a file (a pipe could fill and block)."""
  with open(log_path, "w") as log:
    return subprocess.Popen(
        trainer_helpers.trainer_command(str(model_dir), *params),
        env=trainer_helpers.subprocess_env(), stdout=log, stderr=log)


def test_killed_trainer_resumes_to_the_right_step(tmp_path):
  model_dir, log_path = tmp_path / "model", tmp_path / "log"
  params = ("TRAIN_STEPS = 200", "effnet_gin.train.train.schedule = 'train'",
            "effnet_gin.train.train.checkpoint_every_steps = 10")
  process = _start(model_dir, log_path, *params)
  try:
    killed_after = _wait_until(
        lambda: trainer_helpers.latest_step(str(model_dir)), process,
        log_path, "a first checkpoint")
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
  resumed_at = int(rerun.stderr.split("Resumed from")[1].split("at step ")[1]
                   .split()[0])
  assert killed_after <= resumed_at < 200


def test_sigterm_checkpoints_and_exits_resumable(tmp_path):
  model_dir, log_path = tmp_path / "model", tmp_path / "log"
  params = ("TRAIN_STEPS = 5000", "effnet_gin.train.train.schedule = 'train'",
            "effnet_gin.train.train.checkpoint_every_steps = 10000")
  process = _start(model_dir, log_path, *params)
  try:
    # With checkpoints every 10000 steps, the only early checkpoint is the
    # one SIGTERM forces; wait for the first training loop's console line.
    _wait_until(lambda: "step 1/5000" in log_path.read_text(), process,
                log_path, "the first training loop")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 75, log_path.read_text()[-3000:]
  stopped_at = trainer_helpers.latest_step(str(model_dir))
  assert stopped_at is not None and 1 <= stopped_at < 5000
  assert f"Stopped by SIGTERM at step {stopped_at}" in log_path.read_text()
  rerun = trainer_helpers.run_trainer(
      str(model_dir), f"TRAIN_STEPS = {stopped_at + 2}", *params[1:])
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Resumed from" in rerun.stderr
  assert trainer_helpers.latest_step(str(model_dir)) == stopped_at + 2


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_multi_worker_mirrored_trains_and_the_chief_saves(tmp_path):
  ports = [_free_port(), _free_port()]
  cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
  params = ("TRAIN_STEPS = 4", "STEPS_PER_LOOP = 2",
            "TRAIN_BATCH_SIZE = 8",
            "effnet_gin.train.build_strategy.kind = 'multi_worker'",
            "effnet_gin.train.train.schedule = 'train'")
  processes = []
  for index in range(2):
    env = trainer_helpers.subprocess_env(TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    processes.append(subprocess.Popen(
        trainer_helpers.trainer_command(str(tmp_path), *params), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=300)[1])
  finally:
    for process in processes:
      process.kill()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  assert "MultiWorkerMirroredStrategy" in outputs[0] or (
      "multi_worker" in outputs[0] or "Collective" in outputs[0])
  assert trainer_helpers.latest_step(str(tmp_path)) == 4
  # Only the chief's files remain: no scratch directory of the worker.
  leftovers = [name for name in os.listdir(tmp_path)
               if name.startswith(".worker_scratch")]
  assert leftovers == []
  # Only the chief wrote the run files.
  assert (tmp_path / "command").exists()
  reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-4"))
  assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 4
