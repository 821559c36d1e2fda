"""The run directory (model_dir): the name and path of everything in it.

Every file the trainer, the evaluator, the exporter and the importer read or
write in a model_dir is named here, once:

  model_dir/
    command                   the trainer's command line (chief, at start).
    config.gin                the gin config the trainer was given.
    operative_config.gin      the bindings it used (after its first loop).
    run.json                  the run's facts as plain data: its train_steps,
                              where the evaluator stops.
    model.gin                 bin/import_checkpoint's: builds ckpt-0's model.
    run.lock                  present while a trainer runs: its host, pid,
                              start and heartbeat (`run_lock`).
    checkpoint                the state file listing the checkpoints.
    ckpt-<STEP>.index         a checkpoint (`tf.train.Checkpoint(step, model,
    ckpt-<STEP>.data-*          optimizer, ema)`), see `checkpointing`.
    .worker_scratch_<ID>/     a non-chief worker's save, removed right after.
    unrestorable/<TIME>/      files of checkpoints that did not restore, set
                              aside (never deleted) by a resuming trainer.
    train/                    TensorBoard: the training loop's scalars and the
                              operative config.
    train_eval/               TensorBoard: in-process evaluations' scalars
                              (train.mode='train_and_eval').
    eval/
      events.*                TensorBoard: bin/evaluator's scalars.
      results.jsonl           one JSON line per evaluated checkpoint of the
                              run: step, checkpoint, metrics.
      other_checkpoints.jsonl results of checkpoints that are not the run's
                              own (in best/ or another directory).
      record_counts.json      the validation files' record counts.
      recorded_in_process     present once a train_and_eval trainer records
                              the run's evaluations: bin/evaluator then
                              leaves results.jsonl and best/ to it.
    eval_image_glob/          bin/evaluator --imagenet_eval_glob's: its
                              TensorBoard scalars and results.jsonl (one line
                              per checkpoint, with the glob and label file).
    best/
      checkpoint, ckpt-<STEP>.*  a copy of the best checkpoint by top-1.
      best_result.json        its result, and the checkpoint it came from.

All but .worker_scratch_* is written by the chief only. results.jsonl and
best/ are written by `evaluation.records.Recorder`, which also states their
one-writer rule: bin/evaluator's, or a train_and_eval trainer's. All I/O goes
through `tf.io.gfile`, so model_dir may be a gs:// path.
"""
import json
import os

import tensorflow as tf

# Checkpoints.
CHECKPOINT_PREFIX = "ckpt"
CHECKPOINT_STATE_FILE = "checkpoint"
UNRESTORABLE_DIR = "unrestorable"
WORKER_SCRATCH_PREFIX = ".worker_scratch_"

# What the trainer and the importer record about the run.
COMMAND_FILE = "command"
CONFIG_FILE = "config.gin"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
MODEL_GIN_FILE = "model.gin"
RUN_FILE = "run.json"
RUN_LOCK_FILE = "run.lock"

# TensorBoard.
TRAIN_SUMMARIES_DIR = "train"
TRAIN_EVAL_SUMMARIES_DIR = "train_eval"

# Evaluation records.
EVAL_DIR = "eval"
RESULTS_FILE = "results.jsonl"
OTHER_RESULTS_FILE = "other_checkpoints.jsonl"
RECORD_COUNTS_FILE = "record_counts.json"
RECORDED_IN_PROCESS_FILE = "recorded_in_process"
IMAGE_GLOB_EVAL_DIR = "eval_image_glob"
BEST_DIR = "best"
BEST_RESULT_FILE = "best_result.json"


def path(model_dir, *names):
  """`model_dir/name/...`, model_dir's trailing slash dropped."""
  return "/".join([model_dir.rstrip("/"), *names])


def checkpoint_path(directory, step):
  """The prefix of checkpoint number `step` in `directory`."""
  return path(directory, f"{CHECKPOINT_PREFIX}-{step}")


def checkpoint_step(checkpoint):
  """The step number in a `.../ckpt-<STEP>` checkpoint path, or None."""
  suffix = checkpoint.rsplit("-", 1)[-1]
  return int(suffix) if suffix.isdigit() else None


def is_own_checkpoint(model_dir, checkpoint):
  """Whether checkpoint prefix `checkpoint` lives directly in model_dir."""
  return checkpoint.rstrip("/").rsplit("/", 1)[0] == model_dir.rstrip("/")


def write_text(directory, filename, text):
  """Writes `text` to `directory/filename` atomically (write, then rename).

  The directory is created if missing.
  """
  tf.io.gfile.makedirs(directory)
  target = path(directory, filename)
  tmp_path = f"{target}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp_path, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp_path, target, overwrite=True)


def read_text(directory, filename):
  """The text of `directory/filename`, or None when it does not exist."""
  target = path(directory, filename)
  if not tf.io.gfile.exists(target):
    return None
  with tf.io.gfile.GFile(target) as f:
    return f.read()


def write_checkpoint_state(directory, names, timestamps=(),
                           last_preserved_timestamp=None):
  """Writes the `checkpoint` state file listing `names`, newest last.

  `tf.train.CheckpointManager` tracks (and retains) only the listed
  checkpoints whose timestamps are after `last_preserved_timestamp`; pass
  both from the state being rewritten, or it forgets the older ones.
  """
  lines = [f'model_checkpoint_path: "{names[-1]}"\n']
  lines += [f'all_model_checkpoint_paths: "{name}"\n' for name in names]
  lines += [f"all_model_checkpoint_timestamps: {t!r}\n" for t in timestamps]
  if last_preserved_timestamp is not None:
    lines.append(f"last_preserved_timestamp: {last_preserved_timestamp!r}\n")
  write_text(directory, CHECKPOINT_STATE_FILE, "".join(lines))


def listed_checkpoints(directory):
  """The checkpoint prefixes `directory`'s state file lists, oldest first.

  Ordered by the step in their `ckpt-<STEP>` names; unnumbered ones are left
  out.
  """
  state = tf.train.get_checkpoint_state(directory)
  if state is None:
    return []
  paths = set(state.all_model_checkpoint_paths)
  paths.add(state.model_checkpoint_path)
  numbered = [(checkpoint_step(p), p) for p in paths]
  return [p for s, p in sorted(numbered) if s is not None]


def write_run_config(model_dir, *, command, config=None, train_steps=None):
  """Records the trainer's command line, its config and the run's facts.

  Args:
    model_dir: the run directory.
    command: the command line.
    config: the config text for config.gin, or None.
    train_steps: the run's train steps, written to run.json as plain data
      (the evaluator stops after that step's checkpoint), or None.
  """
  write_text(model_dir, COMMAND_FILE, command or "")
  if config is not None:
    write_text(model_dir, CONFIG_FILE, config)
  if train_steps is not None:
    write_text(model_dir, RUN_FILE,
               json.dumps({"train_steps": int(train_steps)}) + "\n")


def run_train_steps(model_dir):
  """The train_steps the trainer recorded in model_dir/run.json, or None."""
  text = read_text(model_dir, RUN_FILE)
  if text is None:
    return None
  try:
    return int(json.loads(text)["train_steps"])
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(f"{path(model_dir, RUN_FILE)} is not a run file the "
                     f"trainer wrote ({error!r}): {text[:200]!r}") from None
