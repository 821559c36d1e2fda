"""The real Cloud Bigtable emulator for tests, plus a connection-cutting proxy.

Usage in a test module (tests/ is on sys.path under pytest's default import
mode, like `data_helpers`):

    from bigtable_emulator import bigtable_emulator  # noqa: F401 (fixture)
    from bigtable_emulator import load_dataset_into_emulator

    def test_reads(bigtable_emulator, tmp_path):
      write_imagenet_tfrecords(tmp_path, ...)
      load_dataset_into_emulator(bigtable_emulator, tmp_path, table='t1')
      source = bigtable_emulator.source(table='t1')
      ...

The `bigtable_emulator` fixture is module-scoped: it starts one `cbtemulator`
on a free 127.0.0.1 port, waits until the port accepts connections, sets
BIGTABLE_EMULATOR_HOST for the module's tests and stops the emulator after
them. The emulator keeps tables in memory, so tests sharing it use distinct
table names. Subprocess tests (bin/trainer, bin/evaluator) pass
`bigtable_emulator.env()` to the child. Tests are skipped, saying why, only
when no emulator binary can be found, and fail instead under CI (CI set).
"""
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from effnet_gin.data.sources import bigtable
from effnet_gin.data.writers import tfrecords_to_bigtable

EMULATOR_ENV = "BIGTABLE_EMULATOR_HOST"
_SDK_BINARY = os.path.join("platform", "bigtable-emulator", "cbtemulator")
_KNOWN_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk",
                    "/opt/google-cloud-sdk")
_START_TIMEOUT_SECONDS = 30.0


def find_emulator_binary():
  """Returns the path of `cbtemulator`, or None if it is nowhere to be found.

  Looks at $CBTEMULATOR, then under the SDK root that `gcloud info` reports,
  then the usual SDK install roots, then $PATH.
  """
  candidates = [os.environ.get("CBTEMULATOR", "")]
  gcloud = shutil.which("gcloud")
  if gcloud:
    try:
      sdk_root = subprocess.run(
          [gcloud, "info", "--format=value(installation.sdk_root)"],
          capture_output=True, text=True, timeout=60, check=False).stdout
      candidates.append(os.path.join(sdk_root.strip(), _SDK_BINARY))
    except (OSError, subprocess.TimeoutExpired):
      pass
  candidates += [os.path.join(root, _SDK_BINARY) for root in _KNOWN_SDK_ROOTS]
  candidates.append(shutil.which("cbtemulator") or "")
  for path in candidates:
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
      return path
  return None


def free_port():
  """Returns a TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def wait_for_port(port, process=None, timeout=_START_TIMEOUT_SECONDS):
  """Polls until 127.0.0.1:port accepts TCP connections.

  Raises:
    RuntimeError: `process` exited, or nothing listened within `timeout`.
  """
  deadline = time.monotonic() + timeout
  while True:
    if process is not None and process.poll() is not None:
      raise RuntimeError(
          f"Bigtable emulator exited with code {process.returncode} before "
          f"listening on 127.0.0.1:{port}")
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        return
    except OSError:
      if time.monotonic() > deadline:
        raise RuntimeError(f"Nothing listens on 127.0.0.1:{port} after "
                           f"{timeout:.0f}s") from None
      time.sleep(0.05)


class BigtableEmulator:
  """A running `cbtemulator` process on 127.0.0.1 (use as a context manager).

  Attributes:
    port: The emulator's port.
    address: 'host:port', the value for BIGTABLE_EMULATOR_HOST.
    project, instance: The ids the tests use (the emulator accepts any).
  """

  def __init__(self, binary, project="test-project", instance="test-instance"):
    self._binary = binary
    self.project = project
    self.instance = instance
    self.port = None
    self._process = None

  @property
  def address(self):
    return f"127.0.0.1:{self.port}"

  def start(self):
    """Starts the emulator and returns once its port accepts connections."""
    for _ in range(3):  # Another process may grab the free port first.
      self.port = free_port()
      self._process = subprocess.Popen(
          [self._binary, "-host", "127.0.0.1", "-port",
           str(self.port)], stdout=subprocess.DEVNULL,
          stderr=subprocess.DEVNULL)
      try:
        wait_for_port(self.port, self._process)
        return self
      except RuntimeError:
        self.stop()
    raise RuntimeError(f"Could not start the Bigtable emulator {self._binary}")

  def stop(self):
    """Stops the emulator process (its data is lost)."""
    if self._process is None:
      return
    self._process.terminate()
    try:
      self._process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait(timeout=10)
    self._process = None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc_info):
    self.stop()

  def env(self, base=None):
    """A copy of `base` (default: os.environ) that points at the emulator."""
    env = dict(os.environ if base is None else base)
    env[EMULATOR_ENV] = self.address
    return env

  def source(self, table="imagenet", **kwargs):
    """A `BigtableSource` reading `table` of this emulator."""
    return bigtable.BigtableSource(project=self.project, instance=self.instance,
                                   table=table, **kwargs)


@contextlib.contextmanager
def emulator_host(address):
  """Points BIGTABLE_EMULATOR_HOST at `address` inside the block."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(EMULATOR_ENV, address)
    yield


@pytest.fixture(scope="module")
def bigtable_emulator():
  """A running emulator with BIGTABLE_EMULATOR_HOST set, for one test module."""
  binary = find_emulator_binary()
  if binary is None:
    message = ("Cloud Bigtable emulator (cbtemulator) not found: install the "
               "Debian package google-cloud-cli-bigtable-emulator or set "
               "$CBTEMULATOR")
    # CI machines ship the emulator: there a missing one is a broken machine,
    # not a reason to pass without testing Bigtable.
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  with BigtableEmulator(binary) as emulator, emulator_host(emulator.address):
    yield emulator


def load_dataset_into_emulator(emulator, data_dir, *, table="imagenet",
                               **loader_kwargs):
  """Loads ImageNet-format TFRecords from `data_dir` into the emulator.

  Args:
    emulator: A running `BigtableEmulator`.
    data_dir: Directory with `train-*` / `validation-*` TFRecord files.
    table: The table to create (or resume) and fill.
    **loader_kwargs: More arguments of `load_tfrecords_to_bigtable`.

  Returns:
    What `load_tfrecords_to_bigtable` returns: rows written per row prefix.
  """
  with emulator_host(emulator.address):
    return tfrecords_to_bigtable.load_tfrecords_to_bigtable(
        data_dir=str(data_dir), project=emulator.project,
        instance=emulator.instance, table=table, **loader_kwargs)


class CuttingProxy:
  """A loopback TCP proxy that drops its connections once, mid-stream.

  Clients connect to `address`; traffic is relayed to 127.0.0.1:target_port.
  After `arm(n)`, once n more bytes went from the server to the client, every
  open connection is closed abruptly (the client sees a dropped connection,
  gRPC UNAVAILABLE); `cut_now()` does so at once. Later connections are
  relayed untouched. Threads are
  daemons, sockets time out, and `close()` ends everything.
  """

  def __init__(self, target_port):
    self._target_port = target_port
    self._listener = socket.create_server(("127.0.0.1", 0))
    self._listener.settimeout(0.2)
    self.port = self._listener.getsockname()[1]
    self._lock = threading.Lock()
    self._sockets = []
    self._cut_after = None
    self._relayed = 0
    self.cuts = 0
    self._closed = threading.Event()
    threading.Thread(target=self._accept_loop, daemon=True).start()

  @property
  def address(self):
    return f"127.0.0.1:{self.port}"

  def arm(self, cut_after_bytes):
    """Cuts all connections once `cut_after_bytes` more bytes went out."""
    with self._lock:
      self._cut_after = cut_after_bytes
      self._relayed = 0

  def cut_now(self):
    """Drops every open connection at once."""
    with self._lock:
      self.cuts += 1
      self._close_all_locked()

  def close(self):
    self._closed.set()
    self._listener.close()
    with self._lock:
      self._close_all_locked()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def _close_all_locked(self):
    for sock in self._sockets:
      # shutdown() first: it wakes the pump blocked in recv() on this socket,
      # which close() alone would not.
      with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
      sock.close()
    self._sockets.clear()

  def _accept_loop(self):
    while not self._closed.is_set():
      try:
        client, _ = self._listener.accept()
      except socket.timeout:
        continue
      except OSError:
        return
      try:
        server = socket.create_connection(("127.0.0.1", self._target_port),
                                          timeout=5)
      except OSError:
        client.close()
        continue
      with self._lock:
        self._sockets += [client, server]
      threading.Thread(target=self._pump, args=(client, server, False),
                       daemon=True).start()
      threading.Thread(target=self._pump, args=(server, client, True),
                       daemon=True).start()

  def _pump(self, source, sink, to_client):
    source.settimeout(60)
    try:
      while not self._closed.is_set():
        data = source.recv(65536)
        if not data:
          break
        if to_client:
          data, cut = self._count(data)
          if cut:
            with contextlib.suppress(OSError):
              sink.sendall(data)  # The bytes before the cut still arrive.
            self._cut()
            return
        sink.sendall(data)
    except OSError:
      pass
    with contextlib.suppress(OSError):
      sink.shutdown(socket.SHUT_WR)

  def _count(self, data):
    """Returns (the part of `data` before the cut point, whether to cut)."""
    with self._lock:
      if self._cut_after is None:
        return data, False
      remaining = self._cut_after - self._relayed
      self._relayed += len(data)
      if len(data) < remaining:
        return data, False
      self._cut_after = None
      self.cuts += 1
      return data[:remaining], True

  def _cut(self):
    with self._lock:
      self._close_all_locked()
