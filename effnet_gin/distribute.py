"""Distribution strategy and numeric precision, using TensorFlow's own engines.

`build_strategy` picks, in this order: a TPU when one is named
(`TPUClusterResolver` -> connect -> initialize -> `TPUStrategy`, exactly as
the TF TPU guide), `MultiWorkerMirroredStrategy` when `TF_CONFIG` describes
more than one task, `MirroredStrategy` over the local GPUs, and otherwise the
default strategy. `mirrored_cpu` mirrors over logical CPU devices for tests
and demos on CPU-only machines.
"""
import json
import os
import threading

import keras
import tensorflow as tf

_KINDS = ("auto", "tpu", "gpu", "multi_worker", "cpu", "mirrored_cpu")

# What TensorFlow's TPUClusterResolver raises when a TPU is named but the
# Google API client it talks to the Cloud TPU API with is not installed.
_MISSING_API_CLIENT = "Missing runtime dependency on the Google API client"


class NoTPUError(ValueError):
  """A TPU config ran without a TPU named (no --tpu, no TPU_NAME)."""


_PRECISION_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def _tf_config():
  """Returns the parsed `TF_CONFIG` environment variable ({} when unset).

  Raises:
    ValueError: If `TF_CONFIG` is not a JSON object.
  """
  raw = os.environ.get("TF_CONFIG", "")
  if not raw.strip():
    return {}
  try:
    config = json.loads(raw)
  except json.JSONDecodeError as err:
    raise ValueError(f"TF_CONFIG is not valid JSON: {raw!r}") from err
  if not isinstance(config, dict):
    raise ValueError(f"TF_CONFIG must be a JSON object, got {raw!r}")
  return config


def _num_cluster_tasks(config):
  """Counts the chief and worker tasks of a parsed TF_CONFIG cluster."""
  cluster = config.get("cluster", {})
  return sum(len(cluster.get(job, ())) for job in ("chief", "worker"))


def select_strategy_kind(*, kind="auto", tpu=None):
  """Returns the concrete kind `build_strategy` will build for `kind`.

  'auto' resolves to 'tpu' when `tpu` is set, else 'multi_worker' when
  `TF_CONFIG` lists more than one chief/worker task, else 'gpu' when GPUs are
  visible, else 'cpu'. Other kinds are returned unchanged.

  Args:
    kind: One of 'auto', 'tpu', 'gpu', 'multi_worker', 'cpu',
      'mirrored_cpu'.
    tpu: The TPU name or address, if any.

  Returns:
    The concrete kind, never 'auto'.

  Raises:
    ValueError: If `kind` is unknown or `TF_CONFIG` is malformed.
  """
  if kind not in _KINDS:
    raise ValueError(f"Unknown strategy kind {kind!r}; expected one of "
                     f"{_KINDS}.")
  if kind != "auto":
    return kind
  if tpu:
    return "tpu"
  if _num_cluster_tasks(_tf_config()) > 1:
    return "multi_worker"
  if tf.config.list_physical_devices("GPU"):
    return "gpu"
  return "cpu"


def build_strategy(*, tpu=None, zone=None, project=None, kind="auto",
                   num_cpu_replicas=2, tpu_resolve_timeout_secs=60.0):
  """Builds the `tf.distribute.Strategy` to train or evaluate with.

  Args:
    tpu: TPU name, 'grpc://' address or 'local' (TPU VM). Setting it makes
      'auto' pick the TPU.
    zone: GCE zone of the TPU; discovered from the GCE metadata server if
      omitted.
    project: GCP project of the TPU; discovered like `zone` if omitted.
    kind: 'auto' (see `select_strategy_kind`), 'tpu', 'gpu' (MirroredStrategy
      over the local GPUs), 'multi_worker' (MultiWorkerMirroredStrategy from
      TF_CONFIG, collective implementation chosen automatically), 'cpu' (the
      default strategy) or 'mirrored_cpu' (MirroredStrategy over
      `num_cpu_replicas` logical CPU devices).
    num_cpu_replicas: Replica count of 'mirrored_cpu'.
    tpu_resolve_timeout_secs: Limit on resolving the TPU's address (GCE
      metadata and Cloud TPU API look-ups, which can otherwise hang when the
      network drops packets).

  Returns:
    A `tf.distribute.Strategy`.

  Raises:
    NoTPUError: If kind is 'tpu' and neither `tpu` nor $TPU_NAME names one.
    ValueError: If `kind` is unknown, a requested device kind is absent, or
      the TPU cannot be resolved, reached or initialised (the message names
      the TPU, zone and project, and the extra to install when the resolver
      lacks its Google API client).
  """
  kind = select_strategy_kind(kind=kind, tpu=tpu)
  if kind == "tpu" and not (tpu or os.environ.get("TPU_NAME")):
    raise NoTPUError(
        "this config trains on a Cloud TPU but no TPU was named: pass "
        "--tpu=local on a TPU VM or --tpu=NAME for a TPU Node, or use "
        "b0_gpu.gin / b0_cpu.gin to train without a TPU")
  if kind == "tpu":
    return _tpu_strategy(tpu, zone, project, tpu_resolve_timeout_secs)
  if kind == "multi_worker":
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.
        AUTO)
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=options)
  if kind == "gpu":
    if not tf.config.list_physical_devices("GPU"):
      raise ValueError("build_strategy kind='gpu' but TensorFlow sees no GPU.")
    return tf.distribute.MirroredStrategy()
  if kind == "mirrored_cpu":
    return tf.distribute.MirroredStrategy(_logical_cpus(num_cpu_replicas))
  return tf.distribute.get_strategy()


def _describe_tpu(tpu, zone, project):
  return f"TPU {tpu!r} (zone={zone!r}, project={project!r})"


def _resolve_tpu(tpu, zone, project, timeout_secs):
  """Resolves the TPU's cluster spec, giving up after `timeout_secs`.

  The resolver's GCE metadata and Cloud TPU API requests have no timeout of
  their own; they run in a daemon thread so a silent network cannot hang the
  trainer (the thread is abandoned on timeout).
  """
  outcome = {}

  def resolve():
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
          tpu=tpu, zone=zone, project=project)
      resolver.cluster_spec()
      outcome["resolver"] = resolver
    except Exception as err:  # pylint: disable=broad-except
      outcome["error"] = err

  thread = threading.Thread(target=resolve, name="resolve_tpu", daemon=True)
  thread.start()
  thread.join(timeout_secs)
  description = _describe_tpu(tpu, zone, project)
  if thread.is_alive():
    raise ValueError(f"Could not resolve {description} within "
                     f"{timeout_secs:g} s; check the name, zone, project and "
                     "that this machine can reach the GCE metadata server "
                     "and the Cloud TPU API.")
  if "error" in outcome:
    err = outcome["error"]
    raise ValueError(explain_resolve_error(description, err)) from err
  return outcome["resolver"]


def explain_resolve_error(description, err):
  """The message for a TPU that could not be resolved, naming the fix.

  Args:
    description: the TPU, zone and project, as `_describe_tpu` gives them.
    err: the exception TPUClusterResolver raised.

  Returns:
    A message; for the resolver's missing Google API client it names the
    effnet_gin extra that installs it.
  """
  message = f"Could not resolve {description}: {type(err).__name__}: {err}"
  if _MISSING_API_CLIENT in str(err):
    message += (" — install effnet_gin's TPU extra: pip install "
                "'effnet_gin[tpu]' (google-api-python-client and "
                "oauth2client, which TensorFlow's TPU resolver uses)")
  return message


def _tpu_strategy(tpu, zone, project, timeout_secs):
  """Connects to and initialises a TPU system, then returns a TPUStrategy."""
  resolver = _resolve_tpu(tpu, zone, project, timeout_secs)
  try:
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (tf.errors.OpError, RuntimeError, ValueError) as err:
    raise ValueError(f"Could not reach or initialise "
                     f"{_describe_tpu(tpu, zone, project)}: {err}") from err
  return tf.distribute.TPUStrategy(resolver)


def _logical_cpus(count):
  """Returns the names of `count` logical CPU devices, creating them if needed.

  Raises:
    ValueError: If `count` < 1, or fewer logical CPUs exist and TensorFlow is
      already initialised (too late to split the CPU).
  """
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ValueError(
        f"num_cpu_replicas must be a positive integer, got {count!r}.")
  devices = tf.config.list_logical_devices("CPU")
  if len(devices) < count:
    physical = tf.config.list_physical_devices("CPU")
    try:
      tf.config.set_logical_device_configuration(
          physical[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as err:
      raise ValueError(
          f"num_cpu_replicas={count} but TensorFlow is already initialised "
          f"with {len(devices)} logical CPU device(s); build the strategy "
          "before running any TensorFlow op.") from err
    devices = tf.config.list_logical_devices("CPU")
  return [device.name for device in devices[:count]]


def is_chief(strategy):
  """Whether this process is the chief: the one that writes config/summaries.

  Single-client strategies (default, Mirrored, TPU) are always chief. Under
  `MultiWorkerMirroredStrategy` the chief is the 'chief' task, or worker 0
  when the cluster has no 'chief' job.

  Args:
    strategy: A `tf.distribute.Strategy`.

  Returns:
    A bool.
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  resolver = strategy.cluster_resolver
  return is_chief_task(resolver.cluster_spec().as_dict(), resolver.task_type,
                       resolver.task_id)


def is_chief_process(strategy=None):
  """Whether this process is the chief, also before its strategy is built.

  Args:
    strategy: the process's `tf.distribute.Strategy`, or None when it is not
      built yet: then `TF_CONFIG` decides, as `build_strategy` would (a
      cluster of several chief/worker tasks is multi-worker).

  Returns:
    A bool.
  """
  if strategy is not None:
    return is_chief(strategy)
  config = _tf_config()
  if _num_cluster_tasks(config) <= 1:
    return True
  task = config.get("task", {})
  return is_chief_task(config["cluster"], task.get("type"), task.get("index"))


def is_chief_task(cluster, task_type, task_id):
  """Whether a task of a TF_CONFIG-style cluster is its chief.

  Args:
    cluster: Dict job name -> list of addresses (TF_CONFIG's "cluster").
    task_type: The task's job, e.g. 'chief', 'worker', 'evaluator'; None for a
      single local process.
    task_id: The task's index within its job.

  Returns:
    True for the 'chief' task, for worker 0 when `cluster` has no 'chief'
    job, and for a process outside any cluster; False otherwise.
  """
  if not task_type:
    return True
  if task_type == "chief":
    return True
  return task_type == "worker" and task_id == 0 and not cluster.get("chief")


def set_precision_policy(policy):
  """Sets the global Keras dtype policy; call it before building the model.

  'mixed_bfloat16' is the TPU setting of the reference (variables float32,
  compute bfloat16); 'mixed_float16' is for GPUs and makes `build_optimizer`
  add loss scaling.

  Args:
    policy: 'float32', 'mixed_bfloat16' or 'mixed_float16'.

  Returns:
    The policy name.

  Raises:
    ValueError: If `policy` is not one of those.
  """
  if policy not in _PRECISION_POLICIES:
    raise ValueError(f"Unknown precision policy {policy!r}; expected one of "
                     f"{_PRECISION_POLICIES}.")
  keras.mixed_precision.set_global_policy(policy)
  return policy


# Ops through which a tf.data pipeline calls back into this Python process
# (`from_generator`, `tf.py_function`, `tf.numpy_function`).
_PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def tpu_node_master(strategy):
  """The grpc:// master of a TPU Node behind `strategy`, else None.

  A TPU Node's input pipeline runs on its remote TPU host, not in this
  process; on a TPU VM (`--tpu=local`) it runs here.
  """
  if not isinstance(strategy, tf.distribute.TPUStrategy):
    return None
  master = strategy.cluster_resolver.master()
  return master if is_remote_master(master) else None


def is_remote_master(master):
  """Whether a cluster resolver's master is a remote grpc:// address."""
  return bool(master) and master.startswith("grpc://")


def dataset_calls_python(dataset):
  """Whether `dataset`'s graph calls back into Python (e.g. from_generator)."""
  # tf.data has no public view of a pipeline's ops; its serialized graph
  # (the same one shipped to a remote host) is the ground truth.
  serialized = dataset._as_serialized_graph()  # pylint: disable=protected-access
  graph = tf.compat.v1.GraphDef.FromString(serialized.numpy())
  ops = {node.op for node in graph.node}
  ops.update(node.op
             for function in graph.library.function
             for node in function.node_def)
  return bool(ops & _PYTHON_OPS)


def check_input_runs_on(master, dataset):
  """Fails at start when a remote TPU host would have to run Python input.

  Args:
    master: the TPU Node's grpc:// master (`tpu_node_master`), or None.
    dataset: one input pipeline's `tf.data.Dataset`.

  Raises:
    ValueError: when `master` is remote and the pipeline calls Python (the
      Bigtable source reads its rows with `from_generator`).
  """
  if master is None or not dataset_calls_python(dataset):
    return
  raise ValueError(
      f"the input pipeline calls Python (the Bigtable source reads rows with "
      f"tf.data from_generator), which the TPU Node's remote host {master} "
      "cannot run. Bigtable input works on a TPU VM (--tpu=local), on GPU "
      "and on CPU hosts; on a TPU Node, read TFRecord files instead.")


def distributed_dataset(strategy, dataset_builder, **kwargs):
  """Per-replica batches of `dataset_builder(input_context, **kwargs)`.

  Each input pipeline calls `dataset_builder` with its `InputContext`
  (`distribute_datasets_from_function`); a TPU Node's pipeline is checked
  to run on its host (`check_input_runs_on`).
  """
  tpu_node = tpu_node_master(strategy)

  def dataset_fn(input_context):
    dataset = dataset_builder(input_context, **kwargs)
    check_input_runs_on(tpu_node, dataset)
    return dataset

  return strategy.distribute_datasets_from_function(dataset_fn)
