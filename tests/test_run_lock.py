"""One trainer per model_dir: the run lock (`effnet_gin.checkpoints.run_lock`).

The trainer tests run bin/trainer as real processes: a live holder refuses a
second trainer, a SIGKILLed holder's lock is taken over by the restart,
which resumes and removes the lock when it ends. The others exercise the
lock's rules on real lock files.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from effnet_gin import distribute
from effnet_gin.checkpoints import run_dir
from effnet_gin.checkpoints import run_lock
from effnet_gin.train import trainer
import trainer_helpers


def _lock_path(model_dir):
  return os.path.join(str(model_dir), run_dir.RUN_LOCK_FILE)


def _read_lock(model_dir):
  with open(_lock_path(model_dir)) as f:
    return json.load(f)


def _write_lock(model_dir, **fields):
  """Writes a lock file as another trainer would have left it."""
  now = time.time()
  holder = dict(host=socket.gethostname(), pid=os.getpid(), since=now - 100,
                heartbeat=now, token="someone-else")
  holder.update(fields)
  with open(_lock_path(model_dir), "w") as f:
    json.dump(holder, f)


def _dead_pid():
  """The pid of a process that has exited (and been reaped)."""
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


_PARAMS = ("effnet_gin.train.train.mode = 'train'",
           "effnet_gin.train.train.checkpoint_every_steps = 5")


def test_live_trainer_refuses_a_second_and_a_killed_ones_lock_is_taken_over(
    tmp_path):
  model_dir, log_path = tmp_path / "model", tmp_path / "log"
  with open(log_path, "w") as log:
    first = subprocess.Popen(
        trainer_helpers.trainer_command(str(model_dir), "TRAIN_STEPS = 100000",
                                        *_PARAMS),
        env=trainer_helpers.subprocess_env(), stdout=log, stderr=log)
  try:
    trainer_helpers.wait_until(
        lambda: trainer_helpers.latest_step(str(model_dir)), first, log_path,
        "a first checkpoint")
    assert _read_lock(model_dir)["pid"] == first.pid
    second = trainer_helpers.run_trainer(str(model_dir), "TRAIN_STEPS = 100000",
                                         *_PARAMS, timeout=120)
    assert first.poll() is None, "the first trainer stopped"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  finally:
    first.kill()
  # The second trainer refused with one line naming the live holder.
  assert second.returncode == 1, second.stderr[-3000:]
  refusal = second.stderr.strip().splitlines()[-1]
  assert refusal.startswith(f"bin/trainer: model_dir {model_dir} is in use"), (
      second.stderr[-3000:])
  assert f"host {socket.gethostname()}, pid {first.pid}, since " in refusal
  assert "Traceback" not in second.stderr
  # The killed trainer's lock is still there; a restart takes it over,
  # resumes and removes the lock at its normal end.
  assert _read_lock(model_dir)["pid"] == first.pid
  killed_at = trainer_helpers.latest_step(str(model_dir))
  final = killed_at + 2
  rerun = trainer_helpers.run_trainer(str(model_dir), f"TRAIN_STEPS = {final}",
                                      *_PARAMS, timeout=120)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Taking over the run lock" in rerun.stderr
  assert f"pid {first.pid}" in rerun.stderr.split("Taking over")[1]
  assert f"at step {killed_at}" in rerun.stderr.split("Resumed from")[1]
  assert trainer_helpers.latest_step(str(model_dir)) == final
  assert not os.path.exists(_lock_path(model_dir))


def test_train_holds_the_lock_while_it_runs_and_drops_it_on_an_exception(
    tmp_path):
  seen = []

  def model_builder(num_classes=None):
    del num_classes
    seen.append(_read_lock(tmp_path)["pid"])
    raise ValueError("no model today")

  with pytest.raises(ValueError, match="no model today"):
    trainer.train(model_dir=str(tmp_path), train_steps=2, train_batch_size=8,
                  image_size=32, num_train_images=64,
                  model_builder=model_builder,
                  strategy=tf.distribute.get_strategy())
  assert seen == [os.getpid()]
  assert not os.path.exists(_lock_path(tmp_path))


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
  with run_lock.holding(str(tmp_path)):
    with pytest.raises(run_lock.RunDirLocked, match=f"pid {os.getpid()},"):
      run_lock.RunLock(str(tmp_path)).acquire()
  assert not os.path.exists(_lock_path(tmp_path))


def test_a_non_chief_takes_no_lock(tmp_path):
  _write_lock(tmp_path, host="elsewhere")
  with run_lock.holding(str(tmp_path), enabled=False) as lock:
    assert lock is None
  assert _read_lock(tmp_path)["host"] == "elsewhere"


def test_another_hosts_fresh_lock_refuses(tmp_path):
  _write_lock(tmp_path, host="tpu-vm-7", pid=4242)
  with pytest.raises(run_lock.RunDirLocked) as refusal:
    run_lock.RunLock(str(tmp_path)).acquire()
  message = str(refusal.value)
  assert "host tpu-vm-7, pid 4242, since " in message
  assert "\n" not in message
  assert _read_lock(tmp_path)["host"] == "tpu-vm-7"


def test_another_hosts_stale_lock_is_taken_over(tmp_path):
  _write_lock(tmp_path, host="tpu-vm-7", pid=4242,
              heartbeat=time.time() - 2 * run_lock.STALE_AFTER_SECONDS)
  with run_lock.holding(str(tmp_path)):
    holder = _read_lock(tmp_path)
    assert (holder["host"], holder["pid"]) == (socket.gethostname(),
                                               os.getpid())
  assert not os.path.exists(_lock_path(tmp_path))


def test_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path):
  _write_lock(tmp_path, pid=_dead_pid())
  with run_lock.holding(str(tmp_path)):
    assert _read_lock(tmp_path)["pid"] == os.getpid()
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("text", [
    "{\"host\": ",
    json.dumps(dict(host="h", pid="7", since=0, heartbeat=0, token="t")),
])
def test_an_unreadable_lock_refuses_until_it_is_old(tmp_path, text):
  path = _lock_path(tmp_path)
  with open(path, "w") as f:
    f.write(text)
  with pytest.raises(run_lock.RunDirLocked, match="being written"):
    run_lock.RunLock(str(tmp_path)).acquire()
  old = time.time() - 60
  os.utime(path, (old, old))
  with run_lock.holding(str(tmp_path)):
    assert _read_lock(tmp_path)["pid"] == os.getpid()


def test_the_holder_refreshes_its_heartbeat(tmp_path):
  with run_lock.holding(str(tmp_path), heartbeat_seconds=0.05):
    first = _read_lock(tmp_path)["heartbeat"]
    deadline = time.monotonic() + 30
    while _read_lock(tmp_path)["heartbeat"] == first:
      assert time.monotonic() < deadline, "no heartbeat within 30 s"
      time.sleep(0.05)
  assert not os.path.exists(_lock_path(tmp_path))


def test_a_remote_path_gets_the_best_effort_lock(tmp_path):
  # TensorFlow's in-memory file system takes the same path as gs://: no
  # exclusive create, so check, write and read back.
  model_dir = f"ram://{tmp_path.name}/model"
  tf.io.gfile.makedirs(model_dir)
  with run_lock.holding(model_dir):
    with pytest.raises(run_lock.RunDirLocked, match=f"pid {os.getpid()},"):
      run_lock.RunLock(model_dir).acquire()
  assert tf.io.gfile.listdir(model_dir) == []


@pytest.mark.parametrize("task, chief", [(None, True), ("worker 0", True),
                                         ("worker 1", False)])
def test_only_the_chief_of_a_cluster_takes_the_lock(monkeypatch, task, chief):
  # Decided from TF_CONFIG before the strategy exists, as train() does.
  if task:
    task_type, index = task.split()
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps({
            "cluster": {
                "worker": ["localhost:1", "localhost:2"]
            },
            "task": {
                "type": task_type,
                "index": int(index)
            }
        }))
  else:
    monkeypatch.delenv("TF_CONFIG", raising=False)
  assert distribute.is_chief_process() is chief
