"""What an evaluation records, and where (`Recorder`): the results log
(`ResultsLog`, eval/results.jsonl and eval/other_checkpoints.jsonl), the best
archive (`BestCheckpoint`, best/) and the record-count cache
(`RecordCountCache`, eval/record_counts.json). The layout: `run_dir`.
"""
import json

from absl import logging
import tensorflow as tf

from effnet_gin import faults
from effnet_gin.data.sources import tfrecord
from effnet_gin.checkpoints import disk_space
from effnet_gin.checkpoints import run_dir
from effnet_gin.evaluation.metrics import METRICS


class ResultsLog:
  """model_dir/eval/results.jsonl: one JSON object per evaluated checkpoint.

  The whole file is rewritten through a temporary file and a rename on each
  record, because gs:// does not support appending.

  Args:
    model_dir: the run's directory.
    filename: the file in model_dir/eval/ (`run_dir.OTHER_RESULTS_FILE`
      holds the results of checkpoints that are not the run's own).
    eval_dir: the directory in model_dir (`run_dir.IMAGE_GLOB_EVAL_DIR`
      for evaluations on an image glob, keyed by checkpoint).
  """

  def __init__(self, model_dir, filename=run_dir.RESULTS_FILE,
               eval_dir=run_dir.EVAL_DIR):
    self.path = run_dir.path(model_dir, eval_dir, filename)
    self._key = ("step" if filename == run_dir.RESULTS_FILE and
                 eval_dir == run_dir.EVAL_DIR else "checkpoint")

  def read(self):
    """Returns the recorded results, oldest first.

    Raises:
      ValueError: naming the file and line when a line is not JSON.
    """
    if not tf.io.gfile.exists(self.path):
      return []
    with tf.io.gfile.GFile(self.path) as f:
      lines = f.read().splitlines()
    results = []
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        results.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{self.path}, line {number}: not a JSON object "
                         f"({e}): {line[:200]!r}") from e
    return results

  def evaluated_steps(self):
    return {result["step"] for result in self.read()}

  def record(self, result):
    """Adds `result`, replacing an earlier one of the same step (run's own
    results) or of the same checkpoint path (other checkpoints')."""
    kept = [r for r in self.read() if r[self._key] != result[self._key]]
    text = "".join(json.dumps(r) + "\n" for r in kept + [result])
    directory, filename = self.path.rsplit("/", 1)
    try:
      run_dir.write_text(directory, filename, text)
    except disk_space.WRITE_ERRORS as err:
      if not disk_space.is_out_of_space(err):
        raise
      for partial in tf.io.gfile.glob(self.path + ".tmp*"):
        _quietly(tf.io.gfile.remove, partial)
      raise disk_space.OutOfSpaceError(
          f"no space left in {directory} to record the result of "
          f"{result['checkpoint']} in {filename} (it needs "
          f"{disk_space.describe_need(directory, len(text))}); the file "
          "holds the earlier results: free space and rerun to evaluate and "
          "record it") from err


class BestCheckpoint:
  """model_dir/best/: a copy of the checkpoint with the highest top-1 so far.

  Args:
    model_dir: the run's directory.
    metric: the result key to maximise.
  """

  def __init__(self, model_dir, metric="top_1_accuracy"):
    self._model_dir = model_dir.rstrip("/")
    self.directory = run_dir.path(model_dir, run_dir.BEST_DIR)
    self._metric = metric

  def read(self):
    """The best result so far (with its archived `checkpoint`), or None."""
    text = run_dir.read_text(self.directory, run_dir.BEST_RESULT_FILE)
    return None if text is None else json.loads(text)

  def repair(self):
    """Makes best/ what best_result.json says, after a crash in `offer`.

    best_result.json is written after the checkpoint's files and best/'s
    state file, so a crash in between leaves the state file (which
    `--checkpoint=best` reads) naming a checkpoint that best_result.json does
    not; a crash before the old best's files are removed leaves them too. A
    restarted evaluator re-evaluates that checkpoint and offers it again,
    unless the trainer's retention deleted it meanwhile: then this is what
    puts best/ back in line. Called before each offer and when a recorder
    starts.

    Returns:
      The best result so far (`read`), or None.
    """
    best = self.read()
    if not tf.io.gfile.isdir(self.directory):
      return best
    kept = None if best is None else best["checkpoint"].rsplit("/", 1)[-1]
    listed = tf.train.latest_checkpoint(self.directory)
    if kept is not None and (listed or "").rsplit("/", 1)[-1] != kept:
      logging.warning(
          "%s named %s, not the recorded best %s (a crash while "
          "archiving a best checkpoint); naming %s again", self.directory,
          listed, kept, kept)
      run_dir.write_checkpoint_state(self.directory, [kept])
    self._remove_all_but(best and best["checkpoint"])
    return best

  def _remove_all_but(self, prefix):
    """Removes best/'s checkpoint and temporary files but `prefix`'s."""
    kept = prefix and prefix.rsplit("/", 1)[-1] + "."
    for name in tf.io.gfile.listdir(self.directory):
      leftover = ".tmp" in name or (name.startswith(run_dir.CHECKPOINT_PREFIX)
                                    and not (kept and name.startswith(kept)))
      if leftover or (prefix is None and name == run_dir.CHECKPOINT_STATE_FILE):
        logging.info("Removing %s/%s: not the best checkpoint's",
                     self.directory, name)
        tf.io.gfile.remove(f"{self.directory}/{name}")

  def _copy(self, source):
    """Copies the files of checkpoint `source`; False if they vanished."""
    try:
      filenames = tf.io.gfile.glob(source + ".*")
      for filename in filenames:
        # Through a temporary name, so a crash mid-copy damages no file.
        target = f"{self.directory}/{filename.rsplit('/', 1)[-1]}"
        tf.io.gfile.copy(filename, target + ".tmp", overwrite=True)
        tf.io.gfile.rename(target + ".tmp", target, overwrite=True)
    except tf.errors.NotFoundError:
      return False
    return any(f.endswith(".index") for f in filenames)

  def offer(self, result, checkpoint):
    """Archives the evaluated checkpoint when it beats the best so far.

    Args:
      result: the evaluation result; `result['checkpoint']` is copied.
      checkpoint: the restored `tf.train.Checkpoint`, written instead when
        the trainer's retention deleted the files before they were copied.

    Returns:
      Whether the checkpoint became the new best.

    Raises:
      ValueError: for a checkpoint outside model_dir (or in best/).
    """
    best = self.repair()
    if best is not None and result[self._metric] <= best[self._metric]:
      return False
    source = result["checkpoint"]
    # One in best/ itself would be copied onto itself (truncating it).
    if not run_dir.is_own_checkpoint(self._model_dir, source):
      raise ValueError(f"{source!r} is not one of the checkpoints the run "
                       f"wrote in {self._model_dir!r}; it cannot become the "
                       "run's best")
    prefix = f"{self.directory}/{source.rsplit('/', 1)[-1]}"
    try:
      self._archive(result, best, source, prefix, checkpoint)
    except disk_space.WRITE_ERRORS as err:
      if not disk_space.is_out_of_space(err):
        raise
      self._undo(prefix, best)
      raise disk_space.OutOfSpaceError(
          f"no space left in model_dir {self._model_dir} to archive "
          f"{source} in best/ (a checkpoint takes "
          f"{disk_space.describe_need(self._model_dir, _size(source))}); its "
          "result is not recorded and best/ holds the previous best: free "
          "space and rerun to evaluate and record it") from err
    logging.info("New best %s %.5f at step %d: archived in %s", self._metric,
                 result[self._metric], result["step"], self.directory)
    return True

  def _archive(self, result, best, source, prefix, checkpoint):
    """Copies `source` to `prefix` in best/, then the state and result."""
    tf.io.gfile.makedirs(self.directory)
    if not self._copy(source):
      logging.warning(
          "%s was deleted before it could be copied to %s; "
          "writing the restored weights instead", source, self.directory)
      checkpoint.write(prefix)
    run_dir.write_checkpoint_state(self.directory, [prefix.rsplit("/", 1)[-1]])
    faults.point("best_copied")
    run_dir.write_text(
        self.directory, run_dir.BEST_RESULT_FILE,
        json.dumps(dict(result, source_checkpoint=source, checkpoint=prefix),
                   indent=2) + "\n")
    self._remove_all_but(prefix)

  def _undo(self, prefix, best):
    """After a failed `_archive`: best/ back to the previous best only."""
    kept = best["checkpoint"] if best else None
    doomed = tf.io.gfile.glob(f"{self.directory}/*.tmp*")
    if prefix != kept:
      doomed += tf.io.gfile.glob(prefix + ".*")
    for filename in doomed:
      _quietly(tf.io.gfile.remove, filename)
    state = tf.train.get_checkpoint_state(self.directory)
    if state is None or (kept and state.model_checkpoint_path.rsplit("/", 1)[-1]
                         == kept.rsplit("/", 1)[-1]):
      return
    if kept:
      _quietly(run_dir.write_checkpoint_state, self.directory,
               [kept.rsplit("/", 1)[-1]])
    else:
      _quietly(tf.io.gfile.remove,
               run_dir.path(self.directory, run_dir.CHECKPOINT_STATE_FILE))


class RecordCountCache:
  """model_dir/eval/record_counts.json: the eval files' record counts.

  Exactly-once eval needs every validation file's record count, and counting
  reads the files whole (6.4 GB from gs:// for ImageNet). The counts are
  kept as [path, size in bytes, count] entries, so a restarted evaluator
  reuses them, and a file whose name or size changed is counted afresh.

  Args:
    model_dir: the run whose eval/record_counts.json this is.
    counts: the `tfrecord.RecordCounts` the eval pipeline's TFRecordSource
      counts with (unless configured otherwise, every source shares the
      process's `PROCESS_RECORD_COUNTS`).
  """

  def __init__(self, model_dir, counts):
    self.path = run_dir.path(model_dir, run_dir.EVAL_DIR,
                             run_dir.RECORD_COUNTS_FILE)
    self._counts = counts
    self._saved = []

  def load(self):
    """Adds the saved counts to `counts`."""
    if tf.io.gfile.exists(self.path):
      with tf.io.gfile.GFile(self.path) as f:
        self._counts.remember(json.loads(f.read()))
      self._saved = self._counts.entries()
      logging.info("Reusing the record counts of %d eval files from %s",
                   len(self._saved), self.path)

  def save_if_changed(self):
    counts = self._counts.entries()
    if counts != self._saved:
      directory, filename = self.path.rsplit("/", 1)
      run_dir.write_text(directory, filename, json.dumps(counts))
      self._saved = counts


class Recorder:
  """Writes a result where it belongs; the chief's only (others: no-op).

  The run's own checkpoints get TensorBoard scalars, the best archive and
  results.jsonl, in that order: a result counts as done only once it was
  offered to best/, so a crash before that re-evaluates it on restart rather
  than leaving a better step out of best/, and a crash after best/ archived
  it is completed by the next recorder from best/ (even when the checkpoint
  is gone by then). Checkpoints from best/ or another directory go to
  other_checkpoints.jsonl only.

  One writer per run: results.jsonl and best/ are rewritten whole on each
  record, so two processes recording at once could drop each other's lines.
  bin/evaluator records them, unless the trainer evaluates in process
  (train.mode='train_and_eval'): then the trainer's recorder marks
  model_dir/eval/recorded_in_process at its first evaluation, and from then
  on an evaluator's recorder leaves the run's own checkpoints unrecorded
  (`trainer_records`, checked before every record: the evaluator still
  returns and logs its result) while still recording other checkpoints to
  other_checkpoints.jsonl, which the trainer never writes.

  Args:
    model_dir: the run's directory.
    chief: whether this process writes (others' recorders do nothing).
    summary_dir: where the TensorBoard scalars go; model_dir/eval/ if None.
    in_process: this is the trainer's recorder of its in-process
      evaluations, which owns results.jsonl and best/.
    record_counts: the `tfrecord.RecordCounts` whose counts it persists in
      eval/record_counts.json: the ones the eval pipeline counts with.
  """

  def __init__(self, model_dir, chief, *, summary_dir=None, in_process=False,
               record_counts=tfrecord.PROCESS_RECORD_COUNTS):
    self._model_dir = model_dir
    self._chief = chief
    self._in_process = in_process
    self._summary_dir = summary_dir or run_dir.path(model_dir, run_dir.EVAL_DIR)
    if chief and in_process:
      _mark_recorded_in_process(model_dir)
    self.results_log = ResultsLog(model_dir)
    self._other_log = ResultsLog(model_dir, run_dir.OTHER_RESULTS_FILE)
    self._best = BestCheckpoint(model_dir)
    if chief and not self.trainer_records():  # Not while another one writes.
      self._finish_interrupted_record()
    self._writer = None  # Created with the first scalars it writes.
    self._counts = RecordCountCache(model_dir, record_counts)
    self._counts.load()

  def __call__(self, result, checkpoint):
    if not self._chief:
      return
    self._counts.save_if_changed()
    if not run_dir.is_own_checkpoint(self._model_dir, result["checkpoint"]):
      self._other_log.record(result)
      logging.info(
          "%s is not one of the checkpoints the run wrote in %s: "
          "its result went to %s only (not results.jsonl, best/ or "
          "the TensorBoard scalars)", result["checkpoint"], self._model_dir,
          self._other_log.path)
      return
    if self.trainer_records():
      logging.warning(
          "Not recording %s: the trainer of %s evaluates in process "
          "(train.mode='train_and_eval') and is the one writer of its "
          "eval/results.jsonl and best/", result["checkpoint"], self._model_dir)
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self._summary_dir)
    with self._writer.as_default():
      for name in METRICS:
        tf.summary.scalar(name, result[name], step=result["step"])
    self._writer.flush()
    self._best.offer(result, checkpoint)
    faults.point("result_offered")
    self.results_log.record(result)

  def _finish_interrupted_record(self):
    """Completes a record a crash cut short, from what best/ holds.

    best/ is brought in line with best_result.json (`BestCheckpoint.repair`).
    A crash after a result was archived in best/ but before results.jsonl got
    it leaves that result in best_result.json only; it goes to results.jsonl
    now (a restarted evaluator would evaluate the checkpoint again, but the
    trainer's retention may have deleted it meanwhile).
    """
    best = self._best.repair()
    if best is None or best["step"] in self.results_log.evaluated_steps():
      return
    result = {k: v for k, v in best.items() if k != "source_checkpoint"}
    result["checkpoint"] = best["source_checkpoint"]
    logging.warning(
        "Recording the result of %s from %s: it was archived there "
        "but not recorded in %s (a crash in between)", result["checkpoint"],
        self._best.directory, self.results_log.path)
    self.results_log.record(result)

  def trainer_records(self):
    """Whether this is an evaluator's recorder of a run whose trainer
    records its own evaluations (see the class docstring)."""
    if self._in_process or not self._chief:
      return False
    return tf.io.gfile.exists(
        run_dir.path(self._model_dir, run_dir.EVAL_DIR,
                     run_dir.RECORDED_IN_PROCESS_FILE))

  def close(self):
    if self._writer is not None:
      self._writer.close()


def _size(checkpoint):
  return disk_space.files_size(checkpoint + ".*")


def _quietly(fn, *args):
  """fn(*args), logging rather than raising a file system error."""
  try:
    fn(*args)
  except (tf.errors.OpError, OSError) as err:
    logging.warning("Could not clean up %s: %s", args[0], err)


def _mark_recorded_in_process(model_dir):
  directory = run_dir.path(model_dir, run_dir.EVAL_DIR)
  if run_dir.read_text(directory, run_dir.RECORDED_IN_PROCESS_FILE) is None:
    run_dir.write_text(
        directory, run_dir.RECORDED_IN_PROCESS_FILE,
        "The trainer (train.mode='train_and_eval') records this run's "
        "evaluations in\nresults.jsonl and ../best/; bin/evaluator leaves "
        "them to it. Delete this file\nto let bin/evaluator record the run "
        "once the trainer has stopped.\n")
