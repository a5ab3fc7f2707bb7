"""The gui's jobs: the CLI's own jobs, run as processes and recorded under the folders.

A job is a folder ``FOLDER/.emarray-gui/jobs/ID/`` (FOLDER: the served folder that holds its
output) with ``job.json`` (its command line after ``emarray``, inputs, outputs), ``log.txt``
(everything it printed), ``progress.json`` (the engine's progress channel,
``EMARRAY_PROGRESS_FILE``), ``pid.json`` once started, ``exit.json`` once ended
(:mod:`emarray.gui.runjob` writes it), ``stop`` when Stop was asked, ``queued.json`` while it
waits. Its state follows from these files alone, so a gui started later (or another one) lists
the same jobs: queued, running, done, failed (with the job's one-line error), interrupted (the
Resume button: the same command with ``--resume``). Jobs run in their own session: closing the
gui leaves them running.

Jobs started on the command line show up too: a lock beside an output whose process is alive
on this machine is a running job (its command is in the lock); an unfinished output that no
gui job wrote is an interrupted one.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from ..engine.progress import FILE_VAR, read_progress_file
from ..errors import InvalidArgumentError
from .catalog import CachedScan
from .places import Folders

JOBS = Path(".emarray-gui") / "jobs"
#: seconds after Stop's SIGINT before SIGTERM, and before SIGKILL
ESCALATE = (30.0, 60.0)

#: the job's store options (credentials), handed to it in its environment only (never
#: written to its folder, its command line or its log)
STORAGE_VAR = "EMARRAY_GUI_STORAGE_OPTIONS"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _alive(pid_record: dict[str, Any] | None) -> bool:
    """Whether the process recorded is still the one running (pid reuse ruled out)."""
    if not isinstance(pid_record, dict) or pid_record.get("host") != socket.gethostname():
        return False
    try:
        p = psutil.Process(int(pid_record["pid"]))
        return abs(p.create_time() - float(pid_record["created"])) < 1.0 and \
            p.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def tail(path: Path, lines: int = 40, limit: int = 32768) -> list[str]:
    """The last ``lines`` lines of a log (carriage-return updates folded)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read().decode(errors="replace")
    except OSError:
        return []
    out = [ln.rsplit("\r", 1)[-1] for ln in data.splitlines()]
    return [ln for ln in out if ln.strip()][-lines:]


def error_line(log: Path) -> str:
    """The job's one-line error (the CLI's ``error: ...``), else its last line."""
    lines = tail(log, 200)
    errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
    return errors[-1] if errors else (lines[-1] if lines else "")


def state_of(jobdir: Path) -> str:
    """queued, running, stopping, done, failed or interrupted (see the module's docs)."""
    if (jobdir / "queued.json").exists() or any(jobdir.glob(".claimed-*")):
        return "queued"  # waiting, or being started
    ended = _read(jobdir / "exit.json")
    if isinstance(ended, dict):
        if ended.get("code") == 0:
            return "done"
        return "interrupted" if ended.get("interrupted") or (jobdir / "stop").exists() \
            else "failed"
    if _alive(_read(jobdir / "pid.json")):
        return "stopping" if (jobdir / "stop").exists() else "running"
    return "interrupted"  # started, and gone without a word: killed (or the machine stopped)


class Jobs:
    """Every job under the folders; starts queued ones (at most ``max_running`` at a time),
    reaps its children and carries out Stop."""

    def __init__(self, folders: Folders, *, max_running: int = 2,
                 storage_options: dict[str, Any] | None = None, watch: bool = True):
        self.folders = folders
        self.max_running = max_running
        self.storage_options = storage_options
        self.children: dict[str, subprocess.Popen] = {}
        self.scan = CachedScan(folders)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        if watch:
            threading.Thread(target=self._watch, daemon=True, name="emarray-gui-jobs").start()

    # -- where jobs are --------------------------------------------------------------------
    def dirs(self) -> list[Path]:
        out = []
        for r in self.folders.roots:
            base = r / JOBS
            if base.is_dir():
                out += [d for d in base.iterdir() if (d / "job.json").is_file()]
        return out

    def find(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise InvalidArgumentError(f"no job {job_id!r}")
        for r in self.folders.roots:
            d = r / JOBS / job_id
            if (d / "job.json").is_file():
                return d
        raise InvalidArgumentError(f"no job {job_id!r}")

    # -- making and running ------------------------------------------------------------------
    def create(self, kind: str, title: str, argv: list[str], *, inputs: list[str],
               outputs: list[str], resumable: bool, extra: dict[str, Any] | None = None,
               files: dict[str, str] | None = None) -> str:
        """Record a new job (queued) and start it when there is room; return its id.
        ``files``: name -> text written into its folder first (a training config)."""
        home = self.folders.roots[0]
        for p in outputs:
            try:
                home = self.folders.home(Path(p))
                break
            except InvalidArgumentError:
                continue
        job_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        jobdir = home / JOBS / job_id
        try:
            jobdir.mkdir(parents=True)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot record the job in {home / JOBS}: "
                                       f"{exc.strerror or exc}") from None
        for name, text in (files or {}).items():
            (jobdir / name).write_text(text)
        argv = [a.replace("{JOB}", str(jobdir)) for a in argv]
        _write(jobdir / "job.json", {
            "id": job_id, "kind": kind, "title": title, "argv": argv, "inputs": inputs,
            "outputs": outputs, "resumable": resumable, "created": time.time(),
            **(extra or {})})
        _write(jobdir / "queued.json", {"resume": False})
        self.kick()
        return job_id

    def running(self) -> int:
        return sum(1 for d in self.dirs() if state_of(d) in ("running", "stopping"))

    def kick(self) -> None:
        """Start queued jobs, oldest first, while fewer than ``max_running`` run."""
        with self._lock:
            queued = sorted((d for d in self.dirs() if (d / "queued.json").exists()),
                            key=lambda d: (_read(d / "job.json") or {}).get("created", 0))
            room = self.max_running - self.running()
            for d in queued[:max(0, room)]:
                # claim it first: another gui serving this folder may be starting it too
                claim = d / f".claimed-{os.getpid()}"
                try:
                    os.rename(d / "queued.json", claim)
                except FileNotFoundError:
                    continue
                q = _read(claim) or {}
                try:
                    self._start(d, bool(q.get("resume")))
                finally:
                    claim.unlink(missing_ok=True)

    def _start(self, jobdir: Path, resume: bool) -> None:
        for name in ("exit.json", "stop", "progress.json"):
            (jobdir / name).unlink(missing_ok=True)
        record = _read(jobdir / "job.json")
        env = dict(os.environ)
        env[FILE_VAR] = str(jobdir / "progress.json")
        env["PYTHONUNBUFFERED"] = "1"
        env.pop(STORAGE_VAR, None)
        if self.storage_options:
            env[STORAGE_VAR] = json.dumps(self.storage_options)
        with open(jobdir / "log.txt", "ab") as log:
            line = "emarray " + shlex.join(record["argv"] + (["--resume"] if resume else []))
            log.write(f"$ {line}\n".encode())
            log.flush()
            proc = subprocess.Popen([sys.executable, "-m", "emarray.gui.runjob", str(jobdir)]
                                    + (["--resume"] if resume else []),
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=jobdir.parent,
                                    start_new_session=True)
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = time.time()
        _write(jobdir / "pid.json", {"pid": proc.pid, "created": created,
                                     "host": socket.gethostname(), "started": time.time(),
                                     "resume": resume})
        self.children[jobdir.name] = proc

    def stop(self, job_id: str) -> str:
        """Ask a job to stop cleanly (SIGINT; SIGTERM, then SIGKILL if it does not end);
        a queued job is taken off the queue. Returns its state."""
        d = self.find(job_id)
        with self._lock:
            state = state_of(d)
            if state == "queued":
                (d / "queued.json").unlink(missing_ok=True)
                _write(d / "exit.json", {"code": None, "interrupted": "never started",
                                         "ended": time.time(), "never_started": True})
                return state_of(d)
            if state != "running":
                raise InvalidArgumentError(f"job {job_id} is {state}: nothing to stop")
            _write(d / "stop", {"asked": time.time()})
            self._signal(d, signal.SIGINT)
        return state_of(d)

    def _signal(self, d: Path, sig: int) -> None:
        rec = _read(d / "pid.json")
        if _alive(rec):
            try:
                os.killpg(int(rec["pid"]), sig)
            except ProcessLookupError:
                pass

    def resume(self, job_id: str) -> str:
        """Run an interrupted (or failed) job again with ``--resume``."""
        d = self.find(job_id)
        record = _read(d / "job.json") or {}
        with self._lock:
            state = state_of(d)
            if state not in ("interrupted", "failed"):
                raise InvalidArgumentError(f"job {job_id} is {state}: only an interrupted or "
                                           "failed job resumes")
            if not record.get("resumable"):
                raise InvalidArgumentError(f"{record.get('title', job_id)} cannot resume; start "
                                           "it again")
            ended = _read(d / "exit.json") or {}
            (d / "exit.json").unlink(missing_ok=True)
            (d / "stop").unlink(missing_ok=True)
            _write(d / "queued.json", {"resume": not ended.get("never_started")})
        self.kick()
        return state_of(d)

    # -- watching ------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.tick()
            except Exception:  # the watcher must outlive a bad job folder
                import logging
                logging.getLogger("emarray").exception("gui: watching jobs")

    def tick(self) -> None:
        """Reap ended children, escalate stops that take too long, start queued jobs."""
        with self._lock:
            for job_id, proc in list(self.children.items()):
                if proc.poll() is not None:
                    del self.children[job_id]
            for d in self.dirs():
                asked = _read(d / "stop")
                if isinstance(asked, dict) and state_of(d) == "stopping":
                    waited = time.time() - float(asked.get("asked", 0))
                    if waited > ESCALATE[1]:
                        self._signal(d, signal.SIGKILL)
                    elif waited > ESCALATE[0] and not asked.get("term"):
                        self._signal(d, signal.SIGTERM)
                        _write(d / "stop", {**asked, "term": True})
        self.kick()

    def close(self) -> None:
        self._stop.set()

    # -- what the page shows -------------------------------------------------------------
    def summary(self, d: Path, log_lines: int = 0) -> dict[str, Any]:
        record = _read(d / "job.json") or {}
        state = state_of(d)
        prog = read_progress_file(d / "progress.json") or {}
        pid = _read(d / "pid.json") or {}
        ended = _read(d / "exit.json") or {}
        out: dict[str, Any] = {
            "id": d.name, "kind": record.get("kind"), "title": record.get("title"),
            "state": state, "stage": prog.get("stage"), "unit": prog.get("unit"),
            "done": prog.get("done"), "total": prog.get("total"),
            "left_s": prog.get("left_s") if state == "running" else None,
            "error": error_line(d / "log.txt") if state == "failed" else None,
            "outputs": record.get("outputs", []), "inputs": record.get("inputs", []),
            "command": "emarray " + shlex.join(record.get("argv", [])),
            "created": record.get("created"), "started": pid.get("started"),
            "ended": ended.get("ended"), "cpu_s": ended.get("cpu_s"),
            "resumable": bool(record.get("resumable")),
            "report": str(d / "report.html") if (d / "report.html").is_file() else None,
            "source": "gui", "run": record.get("run"),
        }
        if state == "done" and out["total"]:
            out["done"] = out["total"]
        if log_lines:
            out["log"] = tail(d / "log.txt", log_lines)
        return out

    def listing(self) -> list[dict[str, Any]]:
        """Every job (the gui's, newest first, then those started on the command line)."""
        jobs = sorted((self.summary(d) for d in self.dirs()),
                      key=lambda j: -(j.get("created") or 0))
        ours = {os.path.realpath(p) for j in jobs for p in j["outputs"]}
        pids = {(_read(d / "pid.json") or {}).get("pid") for d in self.dirs()}
        return jobs + command_line_jobs(self.scan.get(), ours, pids)


def _lock_record(lock: Path) -> dict[str, Any] | None:
    rec = _read(lock)
    return rec if isinstance(rec, dict) and "pid" in rec else None


def _cli_alive(rec: dict[str, Any]) -> bool:
    if rec.get("host") != socket.gethostname():
        return False
    try:
        return psutil.Process(int(rec["pid"])).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False


def _output_of(lock: Path) -> Path:
    from ..engine.output import LOCK_SUFFIX
    return lock.with_name(lock.name[1:-len(LOCK_SUFFIX)])


def command_line_jobs(cat: Any, ours: set[str], our_pids: set[Any]) -> list[dict[str, Any]]:
    """Jobs started outside the gui, from what the engine leaves beside their outputs."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for lock in cat.locks:
        rec = _lock_record(lock)
        target = os.path.realpath(_output_of(lock))
        if rec is None or target in ours:
            continue
        alive = _cli_alive(rec)
        if alive and rec.get("pid") in our_pids:
            continue
        command = str(rec.get("command", ""))
        if alive:
            seen.add(target)
            out.append({"id": f"cli-{rec['pid']}", "kind": "cli", "title": command,
                        "state": "running", "outputs": [target], "source": "command line",
                        "command": command, "resumable": False, "started": rec.get("started"),
                        **progress_of(Path(target))})
    for v in cat.volumes:
        target = os.path.realpath(v["path"])
        if v.get("unfinished") and target not in ours and target not in seen and \
                not v.get("inside"):
            lock = Path(target).with_name(f".{Path(target).name}.emarray-lock")
            rec = _lock_record(lock) if lock.exists() else None
            command = str(rec["command"]) if rec else f"emarray {v.get('made_by')} ..."
            out.append({"id": f"cli-{abs(hash(target)) % 10**8}", "kind": "cli",
                        "title": f"{v.get('made_by')} {v['name']}", "state": "interrupted",
                        "outputs": [target], "source": "command line", "command": command,
                        "resumable": False,
                        "error": "started outside the gui: run its command again with "
                                 "--resume to finish it", **progress_of(Path(target))})
    return out


def progress_of(store: Path) -> dict[str, Any]:
    """Blocks done of the total of the stage in progress, from the engine's progress files
    inside an output (what a job started on the command line leaves)."""
    import numpy as np

    from ..engine.checkpoint import PROGRESS_DIR
    from ..engine.serialize import loads
    best: dict[str, Any] = {}
    folder = store / PROGRESS_DIR
    try:
        files = sorted(folder.glob("*.progress"), key=lambda f: f.stat().st_mtime)
    except OSError:
        return best
    for f in files[-1:]:
        try:
            state = loads(f.read_bytes(), str(f))
            n = int(state["nblocks"])
            done = int(np.unpackbits(np.asarray(state["done"], np.uint8))[:n].sum())
        except Exception:
            continue
        best = {"stage": f.stem, "done": done, "total": n, "unit": "block"}
    return best
