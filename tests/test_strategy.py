"""Tests of strategy selection, TPU errors, chief election and precision."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import gin
import keras
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin import distribute


@pytest.fixture(name="no_tf_config")
def _no_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)


def _cluster(workers, chief=False):
  cluster = {"worker": [f"localhost:{2000 + i}" for i in range(workers)]}
  if chief:
    cluster["chief"] = ["localhost:1999"]
  return cluster


def test_auto_selects_default_strategy_on_cpu(no_tf_config):
  del no_tf_config
  assert distribute.select_strategy_kind() == "cpu"
  strategy = distribute.build_strategy()
  assert strategy is tf.distribute.get_strategy()
  assert distribute.is_chief(strategy)


@pytest.mark.parametrize("tf_config, expected", [
    ({
        "cluster": _cluster(2),
        "task": {
            "type": "worker",
            "index": 1
        }
    }, "multi_worker"),
    ({
        "cluster": _cluster(1, chief=True),
        "task": {
            "type": "chief",
            "index": 0
        }
    }, "multi_worker"),
    ({
        "cluster": _cluster(1),
        "task": {
            "type": "worker",
            "index": 0
        }
    }, "cpu"),
])
def test_auto_reads_tf_config(monkeypatch, tf_config, expected):
  monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
  assert distribute.select_strategy_kind() == expected
  assert distribute.select_strategy_kind(tpu="my-tpu") == "tpu"


def test_bad_kind_and_tf_config_raise(monkeypatch):
  with pytest.raises(ValueError, match="'fpga'"):
    distribute.build_strategy(kind="fpga")
  monkeypatch.setenv("TF_CONFIG", "{not json")
  with pytest.raises(ValueError, match="not json"):
    distribute.select_strategy_kind()
  with pytest.raises(ValueError, match="no GPU"):
    distribute.build_strategy(kind="gpu")


def test_mirrored_cpu_from_gin():
  gin.parse_config("effnet_gin.train.build_strategy.kind = 'mirrored_cpu'")
  strategy = configurables.build_strategy()
  assert isinstance(strategy, tf.distribute.MirroredStrategy)
  assert strategy.num_replicas_in_sync == 2
  assert distribute.is_chief(strategy)
  # conftest already initialised TensorFlow with two logical CPUs.
  with pytest.raises(ValueError, match="num_cpu_replicas=3"):
    distribute.build_strategy(kind="mirrored_cpu", num_cpu_replicas=3)


def test_unresolvable_tpu_fails_fast_naming_it(monkeypatch):
  # No GCE metadata server here: the zone/project look-up must fail at once.
  monkeypatch.delenv("GCE_METADATA_HOST", raising=False)
  monkeypatch.setenv("GCE_METADATA_IP", "metadata.invalid")
  start = time.monotonic()
  with pytest.raises(ValueError, match="'nonexistent-tpu-name'"):
    distribute.build_strategy(tpu="nonexistent-tpu-name",
                              tpu_resolve_timeout_secs=30)
  assert time.monotonic() - start < 20


def test_silent_metadata_server_times_out(monkeypatch):
  # A server that accepts connections and never answers: without the guard
  # the resolver's urlopen would wait forever.
  with socket.socket() as silent:
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    monkeypatch.setenv("GCE_METADATA_HOST",
                       f"127.0.0.1:{silent.getsockname()[1]}")
    start = time.monotonic()
    with pytest.raises(ValueError, match="'my-tpu'.*within 1 s"):
      distribute.build_strategy(tpu="my-tpu", tpu_resolve_timeout_secs=1)
    assert time.monotonic() - start < 10


def test_a_tpu_config_without_a_tpu_says_so_and_points_elsewhere(monkeypatch):
  monkeypatch.delenv("TPU_NAME", raising=False)
  with pytest.raises(distribute.NoTPUError,
                     match=r"--tpu=local.*--tpu=NAME.*b0_gpu\.gin / b0_cpu"):
    distribute.build_strategy(kind="tpu")


def test_trainer_on_a_tpu_config_without_a_tpu_says_so_in_one_line(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("TPU_NAME", None)
  model_dir = tmp_path / "model"
  # A shard, so the data_dir passes the check before building.
  (tmp_path / "train-00000-of-00001").write_bytes(b"")
  trainer = os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin",
      "trainer")
  result = subprocess.run([
      sys.executable, trainer, "--gin_file=b0_tpu.gin",
      f"--data_dir={tmp_path}", f"--model_dir={model_dir}"
  ], env=env, capture_output=True, text=True, timeout=180, check=False)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert "no TPU was named" in last and "b0_gpu.gin / b0_cpu.gin" in last
  # Stopped before writing anything (the check before building may have
  # created model_dir to probe that it is writable).
  assert not model_dir.exists() or not list(model_dir.iterdir())


def test_missing_api_client_names_the_extra_to_install():
  # The exact error TensorFlow's TPU client raises without the client.
  err = RuntimeError("Missing runtime dependency on the Google API client. "
                     "Run `pip install cloud-tpu-client` to fix.")
  message = distribute.explain_resolve_error("TPU 'my-tpu'", err)
  assert "pip install 'effnet_gin[tpu]'" in message
  assert "'my-tpu'" in message
  other = distribute.explain_resolve_error("TPU 'x'", RuntimeError("boom"))
  assert "effnet_gin[tpu]" not in other


def test_with_the_tpu_extra_a_named_tpu_gets_past_the_dependency(monkeypatch):
  # The [tpu] extra (also in [test]) installs what the resolver needs; it
  # then fails on this machine only for want of a TPU, credentials or
  # network — never for a missing package.
  pytest.importorskip("googleapiclient")
  pytest.importorskip("oauth2client")
  monkeypatch.setenv("GCE_METADATA_IP", "metadata.invalid")
  with pytest.raises(ValueError, match="'my-tpu'") as raised:
    distribute.build_strategy(tpu="my-tpu", zone="us-central1-b",
                              project="my-project", tpu_resolve_timeout_secs=20)
  assert "Missing runtime dependency" not in str(raised.value)


@pytest.mark.parametrize("cluster, task_type, task_id, expected", [
    (_cluster(2), "worker", 0, True),
    (_cluster(2), "worker", 1, False),
    (_cluster(2, chief=True), "chief", 0, True),
    (_cluster(2, chief=True), "worker", 0, False),
    (dict(_cluster(2), evaluator=["localhost:3000"]), "evaluator", 0, False),
    ({}, None, None, True),
])
def test_is_chief_task(cluster, task_type, task_id, expected):
  assert distribute.is_chief_task(cluster, task_type, task_id) is expected


def test_is_chief_task_from_tf_config_resolver(monkeypatch):
  monkeypatch.setenv(
      "TF_CONFIG",
      json.dumps({
          "cluster": _cluster(2, chief=True),
          "task": {
              "type": "worker",
              "index": 0
          }
      }))
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  assert not distribute.is_chief_task(resolver.cluster_spec().as_dict(),
                                      resolver.task_type, resolver.task_id)


_WORKER = textwrap.dedent("""
    from effnet_gin import distribute
    built = distribute.build_strategy()
    print(type(built).__name__, distribute.is_chief(built))
""")


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_multi_worker_strategy_elects_worker_zero(tmp_path):
  """Two real worker processes: MultiWorkerMirroredStrategy from TF_CONFIG."""
  cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  workers = []
  for index in range(2):
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=json.dumps({
            "cluster": cluster,
            "task": {
                "type": "worker",
                "index": index
            }
        }))
    workers.append(
        subprocess.Popen([sys.executable, str(script)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True))
  outputs = []
  for worker in workers:
    try:
      out, err = worker.communicate(timeout=120)
    finally:
      worker.kill()
    assert worker.returncode == 0, err[-2000:]
    outputs.append(out.strip().splitlines()[-1])
  assert outputs == [
      "CollectiveAllReduceStrategy True", "CollectiveAllReduceStrategy False"
  ]


def test_set_precision_policy():
  try:
    assert distribute.set_precision_policy("mixed_bfloat16") == (
        "mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    with pytest.raises(ValueError, match="'bfloat16'"):
      distribute.set_precision_policy("bfloat16")
  finally:
    distribute.set_precision_policy("float32")
  assert keras.mixed_precision.global_policy().name == "float32"


def test_python_input_on_a_tpu_node_fails_at_start_saying_what_works():
  # A real resolver of a TPU Node address (no network needed for grpc://).
  node = tf.distribute.cluster_resolver.TPUClusterResolver(
      tpu="grpc://10.240.1.2:8470")
  assert distribute.is_remote_master(node.master())
  assert not distribute.is_remote_master(
      tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local").master())
  assert distribute.tpu_node_master(tf.distribute.get_strategy()) is None
  rows = tf.data.Dataset.from_generator(
      lambda: iter([b"row"]), output_signature=tf.TensorSpec([], tf.string))
  files = tf.data.TFRecordDataset(["validation-00000-of-00001"])
  for dataset in (rows.map(tf.strings.length), files.map(tf.strings.length)):
    distribute.check_input_runs_on(None, dataset)  # Not a TPU Node.
  distribute.check_input_runs_on(node.master(), files)
  with pytest.raises(ValueError, match=r"grpc://10\.240\.1\.2:8470.*TPU VM"):
    distribute.check_input_runs_on(node.master(), rows)
