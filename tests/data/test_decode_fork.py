"""preprocess.stream in forked processes (what predict does before jax is imported): the same batches as threads,
fork only where it is safe, and a worker that dies is one DataError.

Each case runs in a fresh interpreter that imports jaxcls.data.preprocess but not jax, as `python -m jaxcls.predict`
does when it starts decoding: forking the test process itself, which runs jax's threads, would not be safe.
"""

import json
import subprocess
import sys
import textwrap

from conftest import REPO, subprocess_env, write_image_files


def write_images(folder, count: int = 11) -> list[str]:
  """JPEGs and PNGs of varied sizes, with two unreadable files and a missing one among them."""
  return write_image_files(folder, count, unreadable=(2, 7), missing=(5,), rgb=True, jpeg=True)


def run_script(body: str, tmp_path) -> subprocess.CompletedProcess:
  script = tmp_path / "script.py"
  script.write_text(
    "import json, os, signal, sys, multiprocessing\n"
    "from jaxcls.data import decode, preprocess\n" + textwrap.dedent(body)
  )
  return subprocess.run(
    [sys.executable, str(script)], cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=300
  )


def test_forked_workers_give_the_batches_of_threads(tmp_path):
  files = write_images(tmp_path / "images")
  (tmp_path / "files.json").write_text(json.dumps(files))
  proc = run_script(
    f"""
    files = json.load(open({str(tmp_path / "files.json")!r}))
    prep = preprocess.Preprocessing(crop=decode.Crop((16, 12), "center"), channels=3, max_pixels=10**8)
    fork_ok = preprocess.can_fork(files)
    out = {{}}
    for processes in (True, False):
      with preprocess.stream(files, prep, 4, workers=2, processes=processes) as batches:
        got = [(paths, images.tolist(), errors) for paths, images, errors in batches]
      out[str(processes)] = got
    print(json.dumps({{"can_fork": fork_ok, "batches": out}}))
    """,
    tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.splitlines()[-1])
  assert result["can_fork"] is True  # a fresh command, one thread, no jax: predict's case
  forked, threaded = result["batches"]["True"], result["batches"]["False"]
  assert forked == threaded
  assert [len(paths) for paths, _, _ in forked] == [4, 4, 3]
  errors = [e for _, _, batch_errors in forked for e in batch_errors]
  assert [i for i, e in enumerate(errors) if e] == [2, 5, 7] and errors[5] == "no such file"
  assert sum(len(images) for _, images, _ in forked) == 8


def test_fork_is_refused_once_jax_is_imported_or_a_thread_runs_or_a_file_is_remote(tmp_path):
  proc = run_script(
    """
    import threading
    local = ["/tmp/a.jpg"]
    print(preprocess.can_fork(local), preprocess.can_fork(local + ["gs://bucket/b.jpg"]))
    event = threading.Event()
    thread = threading.Thread(target=event.wait)
    thread.start()
    print(preprocess.can_fork(local))
    event.set()
    thread.join()
    import jax
    print(preprocess.can_fork(local))
    """,
    tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["True", "False", "False", "False"]


def test_a_decode_worker_that_is_killed_is_one_data_error(tmp_path):
  """SIGKILL to a real forked worker (as the kernel's OOM killer does): the consumer gets one DataError naming the
  batch and the fix, and no worker traceback."""
  files = write_images(tmp_path / "images", count=40)
  (tmp_path / "files.json").write_text(json.dumps(files))
  proc = run_script(
    f"""
    from jaxcls.core.errors import DataError
    files = json.load(open({str(tmp_path / "files.json")!r}))
    prep = preprocess.Preprocessing(crop=decode.Crop((16, 12), "center"), channels=3, max_pixels=10**8)
    try:
      with preprocess.stream(files, prep, 4, workers=2, ahead=1, processes=True) as batches:
        first = next(batches)
        for child in multiprocessing.active_children():
          os.kill(child.pid, signal.SIGKILL)
        for batch in batches:
          pass
    except DataError as e:
      print("DataError:", e)
    """,
    tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = proc.stdout.strip().splitlines()[-1]
  assert line.startswith("DataError: A decode worker process died"), proc.stdout
  assert "free memory or pass fewer --workers" in line and "images/" in line
  assert "Traceback" not in proc.stderr
