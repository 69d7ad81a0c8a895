"""The files of a done batch job, downloaded by the client's own resumable downloader in a child process.

`Historical.batch.download` downloads in a pool thread and calls `requests.get` without a timeout: a stalled
connection would hang that thread, the run could not give up on it, and on SIGTERM the process would wait for it
at exit (seen: a SIGTERMed run that did not end). In a child process both are bounded. The run watches the files
grow; when no byte arrived for `source.read_timeout_seconds` it ends the child and tries again (the client resumes
the kept partial file with an HTTP Range request), and when the run is interrupted it ends the child before it
records that. A child whose run died (SIGKILL) ends itself. The API key reaches the child in its environment
only; the child's report (one JSON line per file) is the only thing it writes besides the files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import requests
from databento.common.error import BentoClientError, BentoHttpError, BentoServerError, BentoWarning

from engine.sources import databento_ratelimit as ratelimit
from engine.sources.databento_client import JobQuery, historical, probe_connect
from engine.sources.databento_retry import RetryPolicy

_POLL_SECONDS = 0.1  # how soon a child notices that its run is gone
_WATCH_SECONDS = 1.0  # how often the run measures the download's progress
_REPORT = ".download-report.jsonl"


def download_files(gateway: str | None, job_id: str, filenames: list[str], output_dir: Path, policy: RetryPolicy,
                   on_status: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Download `filenames` of job `job_id` to `output_dir/<job_id>/`; their paths by name. A stalled or failed
    attempt is retried by `policy` (resuming partial files); an interruption ends the child first."""
    folder = Path(output_dir) / job_id
    folder.mkdir(parents=True, exist_ok=True)
    budget = ratelimit.current()
    spec = {"gateway": gateway, "job_id": job_id, "output_dir": str(output_dir), "files": filenames,
            "budget": None if budget is None else {"directory": str(budget.directory),
                                                   "limits": asdict(budget.limits)}}

    def attempt() -> dict[str, Path]:
        probe_connect(gateway or "https://hist.databento.com", policy.timeouts.connect_seconds)
        return _run_child(spec, folder, policy.timeouts.read_seconds, on_status)

    return policy.run(attempt, "batch.download", JobQuery(f"{job_id} ({len(filenames)} files)"))


def _run_child(spec: dict, folder: Path, read_seconds: float,
               on_status: Callable[[str], None] | None) -> dict[str, Path]:
    report = folder / _REPORT
    report.unlink(missing_ok=True)
    with open(report, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(spec)], stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _watch(child, folder, spec["files"], read_seconds, on_status)
    finally:
        _end(child)
    lines = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
    done = {line["file"]: Path(line["path"]) for line in lines if "file" in line}
    if child.returncode == 0 and set(done) == set(spec["files"]):
        return done
    raise _child_error(next((line for line in lines if "error" in line), None), child.returncode, report)


def _watch(child: subprocess.Popen, folder: Path, files: list[str], read_seconds: float,
           on_status: Callable[[str], None] | None) -> None:
    """Until the child ends: a progress line, and ReadTimeout once no byte arrived for `read_seconds`."""
    seen, changed = -1, time.monotonic()
    while True:
        try:
            child.wait(_WATCH_SECONDS)  # returns as soon as the child ends; a signal interrupts it at once
            return
        except subprocess.TimeoutExpired:
            pass
        size = sum(_size(folder / name) for name in files)  # one stat per file a second (jobs of thousands)
        now = time.monotonic()
        if size != seen:
            seen, changed = size, now
            if on_status:
                on_status(f"batch job {folder.name}: downloading {len(files)} files, {size / 1e6:,.1f} MB")
        elif now - changed > read_seconds:
            raise requests.exceptions.ReadTimeout(f"no byte of {folder.name}'s files for {read_seconds:g} s")


def _end(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _child_error(line: dict | None, returncode: int, report: Path) -> Exception:
    """The child's failure as the exception the client raised there (the retry policy sorts it)."""
    if line is None:
        tail = report.read_text(encoding="utf-8", errors="replace")[-500:].strip()
        return ConnectionError(f"the download process ended with exit {returncode}: {tail or 'no output'}")
    if line.get("http_status") is not None:
        kind = BentoClientError if 400 <= line["http_status"] < 500 else BentoServerError
        return kind(http_status=line["http_status"], message=line["error"], headers=line.get("headers") or {})
    return ConnectionError(line["error"])


# ------------------------------------------------------------------------------------------------ the child


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_SECONDS)
        os._exit(1)  # the run that started this download is gone: stop writing its files

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child(spec: dict) -> int:
    _exit_with_parent()
    if spec["budget"] is not None:
        ratelimit.use(Path(spec["budget"]["directory"]), ratelimit.Limits(**spec["budget"]["limits"]))
    client = historical(spec["gateway"])
    try:
        for name in spec["files"]:
            ratelimit.throttle("batch")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BentoWarning)  # the sha256 is checked by the run
                [path] = client.batch.download(job_id=spec["job_id"], output_dir=Path(spec["output_dir"]),
                                               filename_to_download=name)
            print(json.dumps({"file": name, "path": str(path)}), flush=True)
    except BentoHttpError as exc:
        print(json.dumps({"error": str(exc.message or exc), "http_status": exc.http_status,
                          "headers": {k: v for k, v in (exc.headers or {}).items() if k.lower() == "retry-after"}}),
              flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the run, which sorts it
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.argv[1])))
