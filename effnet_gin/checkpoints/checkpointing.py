"""Checkpoints in model_dir: save, resume, and initialise for fine-tuning.

Checkpoints are `model_dir/ckpt-<STEP>` (their names and the run directory's
layout: `run_dir`), written by a
`tf.train.CheckpointManager` around `tf.train.Checkpoint(step, model,
optimizer, ema)`. All I/O goes through TensorFlow's file system layer, so
model_dir may be a gs:// path.

Under MultiWorkerMirroredStrategy every worker must take part in a save, but
only the chief's copy is kept: the others write into a scratch directory
that is removed right after (the pattern the TF multi-worker guide gives).

A checkpoint that does not restore (truncated or corrupt files) does not
strand a run: the trainer resumes from the newest one that does, and moves
the bad one's files to model_dir/unrestorable/ for inspection.
"""
import os
import time

from absl import logging
import tensorflow as tf

from effnet_gin import faults
from effnet_gin.checkpoints import disk_space
from effnet_gin.checkpoints import run_dir

# What reading a truncated, corrupt or half-deleted checkpoint raises; the
# checkpoint reader turns OUT_OF_RANGE ("Read less bytes than requested")
# into IndexError.
RESTORE_ERRORS = (tf.errors.DataLossError, tf.errors.OutOfRangeError,
                  tf.errors.NotFoundError, tf.errors.InvalidArgumentError,
                  IndexError)


def describe_error(err):
  """One line naming an exception's type and its first line of message."""
  return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"


def build_checkpoint(*, model, step=None, optimizer=None, ema=None):
  """The `tf.train.Checkpoint` of the trainer's contract.

  Parts given as None are left out: an evaluator has no optimizer, a run
  trained with `use_ema=False` has no EMA.
  """
  parts = dict(step=step, model=model, optimizer=optimizer, ema=ema)
  return tf.train.Checkpoint(**{
      name: part for name, part in parts.items() if part is not None
  })


# Its callback runs once the files are written, before the state file lists
# them (`faults`).
_FAULT_OPTIONS = tf.train.CheckpointOptions(
    experimental_write_callbacks=[lambda: faults.point("checkpoint_written")])


class Manager:
  """Saves and restores one `tf.train.Checkpoint` in model_dir.

  Args:
    checkpoint: the `tf.train.Checkpoint` to save and restore.
    model_dir: the directory shared by all workers.
    max_to_keep: checkpoints retained (older ones are deleted).
    chief: whether this worker's saves are the ones kept.
    worker_id: distinguishes the scratch directories of non-chief workers.
  """

  def __init__(self, checkpoint, model_dir, *, max_to_keep=5, chief=True,
               worker_id=None):
    self._checkpoint = checkpoint
    self._model_dir = model_dir
    self._chief = chief
    if chief:
      write_dir = model_dir
    else:
      scratch = f"{run_dir.WORKER_SCRATCH_PREFIX}{worker_id or os.getpid()}"
      write_dir = run_dir.path(model_dir, scratch)
    self._write_dir = write_dir
    self._max_to_keep = max_to_keep if chief else 1
    self._manager = self._new_manager()

  def _new_manager(self):
    return tf.train.CheckpointManager(self._checkpoint, self._write_dir,
                                      max_to_keep=self._max_to_keep,
                                      checkpoint_name=run_dir.CHECKPOINT_PREFIX)

  @property
  def checkpoint(self):
    """The `tf.train.Checkpoint` this manager saves and restores."""
    return self._checkpoint

  @property
  def latest(self):
    """Path of the newest checkpoint in model_dir, or None."""
    return tf.train.latest_checkpoint(self._model_dir)

  def restore_latest(self):
    """Restores the newest checkpoint in model_dir that restores.

    Newer checkpoints that fail to read are logged with their error and
    skipped. The chief then moves their files to model_dir/unrestorable/
    (never deleting them) and drops them from the checkpoint state, so that
    neither retention nor a later save of the same step touches them.

    Returns:
      The restored checkpoint's path, or None when model_dir has none.

    Raises:
      ValueError: when model_dir lists checkpoints but none of them restores
        (rather than training from scratch over them).
    """
    listed = run_dir.listed_checkpoints(self._model_dir)
    failed = []
    for path in reversed(listed):
      try:
        self._checkpoint.restore(path).assert_existing_objects_matched()
      except RESTORE_ERRORS as err:
        logging.error(
            "Checkpoint %s does not restore (%s); trying the one "
            "before it", path, describe_error(err))
        failed.append(path)
        continue
      if failed:
        logging.warning(
            "Resuming from %s, the newest checkpoint that "
            "restores; unrestorable: %s", path, failed)
        if self._chief:
          self._set_aside(failed)
      return path
    if failed:
      raise ValueError(f"none of the checkpoints in {self._model_dir!r} "
                       f"restores ({failed}); move them away to start afresh")
    return None

  def _set_aside(self, failed):
    """Moves unrestorable checkpoints to model_dir/unrestorable/."""
    state = tf.train.get_checkpoint_state(self._model_dir)
    paths = state.all_model_checkpoint_paths
    timestamps = (state.all_model_checkpoint_timestamps or
                  [time.time()] * len(paths))
    kept = [(path.rsplit("/", 1)[-1], timestamp)
            for path, timestamp in zip(paths, timestamps)
            if path not in failed]
    # One folder per incident, so an earlier incident's files stay too.
    directory = run_dir.path(self._model_dir, run_dir.UNRESTORABLE_DIR,
                             str(int(time.time())))
    tf.io.gfile.makedirs(directory)
    for prefix in failed:
      for filename in tf.io.gfile.glob(prefix + ".*"):
        target = f"{directory}/{filename.rsplit('/', 1)[-1]}"
        tf.io.gfile.rename(filename, target)
      logging.warning("Moved the files of %s to %s", prefix, directory)
    run_dir.write_checkpoint_state(self._model_dir, [name for name, _ in kept],
                                   [timestamp for _, timestamp in kept],
                                   state.last_preserved_timestamp)
    self._manager = self._new_manager()  # It read the state file.

  def save(self, step):
    """Saves the checkpoint numbered `step`; returns the chief's path.

    Raises:
      disk_space.OutOfSpaceError: the disk is full. The half-written
        checkpoint's files are deleted and the bookkeeping is re-read from
        model_dir's state file, which still lists only complete checkpoints;
        the message names model_dir and about how much a checkpoint needs.
    """
    try:
      path = self._manager.save(checkpoint_number=step, options=_FAULT_OPTIONS)
    except disk_space.WRITE_ERRORS as err:
      if not disk_space.is_out_of_space(err):
        raise
      need = self._checkpoint_bytes()
      self._abandon(step)
      raise disk_space.OutOfSpaceError(
          f"no space left in model_dir {self._model_dir} to save checkpoint "
          f"{run_dir.CHECKPOINT_PREFIX}-{step} (a checkpoint takes "
          f"{disk_space.describe_need(self._write_dir, need)}); "
          f"{self._kept_phrase()}: free space and rerun to resume") from err
    if not self._chief:
      tf.io.gfile.rmtree(self._write_dir)
      return None
    logging.info("Saved checkpoint %s", path)
    return path

  def _checkpoint_bytes(self):
    """About how many bytes a checkpoint takes: the last one's files, or
    the variables' bytes before the first."""
    latest = tf.train.latest_checkpoint(self._write_dir)
    size = disk_space.files_size(latest + ".*") if latest else 0
    if size:
      return size
    variables = {}
    for name in ("model", "optimizer", "ema"):
      part = getattr(self._checkpoint, name, None)
      for variable in (getattr(part, "variables", None) or
                       getattr(part, "averages", None) or ()):
        variables[id(variable)] = variable
    return sum(
        tf.TensorShape(v.shape).num_elements() * tf.as_dtype(v.dtype).size
        for v in variables.values())

  def _abandon(self, step):
    """Deletes what a failed save of `step` wrote, unless the state file
    lists it (then it is complete); re-reads the state file."""
    prefix = run_dir.path(self._write_dir,
                          f"{run_dir.CHECKPOINT_PREFIX}-{step}")
    state = tf.train.get_checkpoint_state(self._write_dir)
    listed = state.all_model_checkpoint_paths if state else []
    if not any(
        path.rsplit("/", 1)[-1] == prefix.rsplit("/", 1)[-1]
        for path in listed):
      for name in tf.io.gfile.glob(prefix + ".*"):
        _quietly(tf.io.gfile.remove, name)
    for name in tf.io.gfile.glob(prefix + "_temp*"):
      _quietly(tf.io.gfile.rmtree, name)
    self._manager = self._new_manager()

  def _kept_phrase(self):
    latest = tf.train.latest_checkpoint(self._write_dir)
    if latest is None:
      return "no checkpoint was written yet"
    return f"the checkpoints up to {latest.rsplit('/', 1)[-1]} are intact"


def _quietly(fn, *args):
  """fn(*args), logging rather than raising a file system error."""
  try:
    fn(*args)
  except (tf.errors.OpError, OSError) as err:
    logging.warning("Could not clean up %s: %s", args[0], describe_error(err))


def resolve_checkpoint(path):
  """Turns a checkpoint prefix or a directory into a checkpoint prefix.

  Raises:
    FileNotFoundError: when `path` holds no checkpoint.
  """
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f"no checkpoint in directory {path!r}")
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist "
                            f"(no {path}.index)")
  return path


def has_ema(path):
  """Whether the checkpoint at prefix `path` holds EMA weights (`ema/...`)."""
  return any(
      name.startswith("ema/") for name, _ in tf.train.list_variables(path))


def checkpoint_num_classes(path):
  """Reads the class count of a checkpoint that follows the trainer's contract.

  The classifier's kernel is the model's only rank-2 weight (convolution
  kernels have rank 4); its optimizer slots and EMA average share its shape.
  Every rank-2 variable is looked at, not only those under `model/`: a
  checkpoint saves each variable once, under its shortest path in the object
  graph, which for the kernel can be `optimizer/_trainable_variables/N`.

  Raises:
    ValueError: when the checkpoint has no single classifier width.
  """
  shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
  widths = {shape[1] for shape in shapes.values() if len(shape) == 2}
  if len(widths) != 1:
    raise ValueError(f"cannot tell the class count of checkpoint {path!r}: "
                     f"found classifier widths {sorted(widths)}")
  return widths.pop()


def restore_source(path, *, model_builder, use_ema=True, ema_factory=None):
  """Rebuilds and restores the model of an effnet_gin checkpoint.

  Args:
    path: a checkpoint prefix.
    model_builder: callable(num_classes) building the source architecture.
    use_ema: take the EMA weights when the checkpoint has them.
    ema_factory: callable(model) building an EMA for the source model.

  Returns:
    (the restored source model, whether its EMA weights were taken).

  Raises:
    ValueError, AssertionError: when the checkpoint is of another
      architecture (TensorFlow's restore errors).
  """
  source = model_builder(checkpoint_num_classes(path))
  ema = None
  if use_ema and ema_factory is not None and has_ema(path):
    ema = ema_factory(source)
  status = build_checkpoint(model=source, ema=ema).read(path)
  status.expect_partial().assert_existing_objects_matched()
  if ema is not None:
    ema.copy_to_model()
  return source, ema is not None
