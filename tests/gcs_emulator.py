"""A real GCS JSON API on localhost for tests: `gcp-storage-emulator` as a subprocess, one per pytest worker.

Use the `gcs` fixture (`from gcs_emulator import gcs` in a test module): it starts the emulator on a free port with
a default bucket, points gcsfs (under etils.epath) and tensorstore (orbax's array data) at it through the
environment, and yields a `Gcs` with the bucket's URL and the environment for subprocesses. No mock: the clients
speak HTTP to the server (which gets the generation headers real GCS sends, see `_LAUNCHER`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

import pytest

BUCKET = "jaxcls-test"


def emulator_env(port: int) -> dict[str, str]:
  """The variables that send every client jaxcls uses to the emulator (see docs/cloud_storage.md)."""
  url = f"http://localhost:{port}"
  return {
    "STORAGE_EMULATOR_HOST": url,  # gcsfs
    "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no credentials
    "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (orbax's arrays)
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",  # tensorstore: no credentials
    "NO_GCE_CHECK": "true",  # google-auth: do not probe the metadata server
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no bucket-layout call the emulator lacks
    "EPATH_USE_TF": "false",  # epath: gcsfs, not TensorFlow's GCS client (whose endpoint is compiled in)
  }


# gcp-storage-emulator's media download omits the x-goog-generation / x-goog-metageneration headers that real GCS
# sends. tensorstore (orbax's arrays) then reads an object with generation "0", and its next conditional write of
# that object (the OCDBT manifest, rewritten when a save's writes arrive in more than one batch, which depends on
# timing) fails with "Malformed StorageGeneration". The launcher adds the two headers, as GCS does, and runs the
# emulator's own command line unchanged.
_LAUNCHER = """
import sys
from gcp_storage_emulator.handlers import objects

_download = objects.download

def download(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # not found: the 404 stands
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

objects.download = download  # before the server module reads its handler table
from gcp_storage_emulator.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class Gcs:
  port: int
  bucket: str
  env: dict[str, str]  # os.environ plus the emulator's variables, for subprocesses

  def url(self, *parts: str) -> str:
    """gs://BUCKET/<unique prefix>/<parts>: a fresh place per call, so tests never see each other's objects."""
    return "/".join([f"gs://{self.bucket}", uuid.uuid4().hex[:12], *parts])

  def objects(self, url: str) -> list[str]:
    """The names of the objects under `url`, relative to it, asked of the server itself (gcsfs, under epath,
    caches listings within a process, so a test polling for a child's writes must not go through it)."""
    bucket, _, prefix = url[len("gs://") :].partition("/")
    prefix = prefix.rstrip("/") + "/"
    names, token = [], ""
    while True:
      query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
      with urllib.request.urlopen(f"http://localhost:{self.port}/storage/v1/b/{bucket}/o?{query}", timeout=10) as reply:
        page = json.load(reply)
      names += [item["name"][len(prefix) :] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def download(self, url: str, target: str) -> str:
    """Copies every object under `url` into the local folder `target` (for readers that need a local path)."""
    from etils import epath  # pylint: disable=g-import-not-at-top

    os.makedirs(target, exist_ok=True)
    for child in epath.Path(url).iterdir():
      local = os.path.join(target, child.name)
      if child.is_dir():
        self.download(os.fspath(child), local)
      else:
        with open(local, "wb") as f:
          f.write(child.read_bytes())
    return target


def _wait_until_up(port: int, proc: subprocess.Popen, log, timeout: float = 60.0) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      log.seek(0)
      raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}: {log.read()[-2000:]}")
    try:
      with urllib.request.urlopen(f"http://localhost:{port}/storage/v1/b/{BUCKET}", timeout=2) as reply:
        if reply.status == 200:
          return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f"gcp-storage-emulator did not answer on port {port} within {timeout:.0f} s")


class _Server:
  """The one emulator of this process. Each test module that imports the fixture gets its own session-scoped copy
  of it from pytest; all of them must share one server, because gcsfs caches its client (and so the endpoint it
  read from the environment) for the whole process."""

  users = 0
  gcs: Gcs | None = None
  proc: subprocess.Popen | None = None
  log = None
  saved: dict[str, str | None] = {}

  @classmethod
  def start(cls) -> Gcs:
    if cls.users == 0:
      if importlib.util.find_spec("gcp_storage_emulator") is None:
        pytest.fail("gcp-storage-emulator is not installed; pip install -e '.[test]'.")
      port = _free_port()
      cls.log = tempfile.TemporaryFile("w+")  # the emulator logs every request: a pipe would fill up and stall it
      # `gcp-storage-emulator start ...`, through the launcher above
      cls.proc = subprocess.Popen(
        [
          sys.executable,
          "-c",
          _LAUNCHER,
          "start",
          "--host=localhost",
          f"--port={port}",
          f"--default-bucket={BUCKET}",
          "-M",
        ],
        stdout=cls.log,
        stderr=subprocess.STDOUT,
        text=True,
      )
      try:
        _wait_until_up(port, cls.proc, cls.log)
      except Exception:
        cls._kill()
        raise
      cls.saved = {key: os.environ.get(key) for key in emulator_env(port)}
      os.environ.update(emulator_env(port))
      cls.gcs = Gcs(port=port, bucket=BUCKET, env=dict(os.environ))
    cls.users += 1
    return cls.gcs

  @classmethod
  def stop(cls) -> None:
    cls.users -= 1
    if cls.users:
      return
    for key, value in cls.saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    cls._kill()

  @classmethod
  def _kill(cls) -> None:
    cls.proc.kill()
    cls.proc.wait()
    cls.log.close()
    cls.gcs = cls.proc = cls.log = None


@pytest.fixture(scope="session")
def gcs():
  """The emulator (started on first use, killed after the last test of the session that uses it)."""
  server = _Server.start()
  try:
    yield server
  finally:
    _Server.stop()
