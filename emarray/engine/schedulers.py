"""Where the blocks run: threads (default), processes, or a dask.distributed cluster.

Tasks are submitted through a bounded window: at most ``window`` are in flight, and the calls
are drawn lazily from an iterator, so a job of a million blocks never holds a million tasks.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import (BackendUnavailableError, BlockFailedError, InputChangedError,
                      InvalidArgumentError, OutputLockedError, SchedulerUnreachableError,
                      WorkersLostError)
from .progress import Progress

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
SCHEDULERS = LOCAL_SCHEDULERS + ("local-cluster", "cuda", "slurm")
#: the protocols a dask scheduler address may use (distributed's comm backends)
PROTOCOLS = ("tcp", "tls", "inproc", "ucx", "ws", "wss")
DEFAULT_CONNECT_TIMEOUT = 10.0
#: seconds a distributed job waits with no worker left (EMARRAY_WORKER_TIMEOUT overrides it)
DEFAULT_LOST_WORKERS_TIMEOUT = 60.0
Call = tuple[Callable[..., Any], tuple]
log = logging.getLogger("emarray")


def check_scheduler(scheduler: Any) -> Any:
    """Validate a scheduler choice before any work; ``None`` reads ``DASK_SCHEDULER_ADDRESS``.

    Accepts a name in :data:`SCHEDULERS`, a scheduler address (``tcp://host:port``), or a
    ``distributed.Client``.
    """
    if scheduler is None:
        scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
    if isinstance(scheduler, str):
        if scheduler in SCHEDULERS:
            return scheduler
        scheme, sep, rest = scheduler.partition("://")
        if sep and scheme.lower() in PROTOCOLS and rest:
            return scheduler
        if sep:
            raise InvalidArgumentError(
                f"scheduler address {scheduler!r} has an unknown protocol {scheme!r}; dask "
                f"schedulers listen on {', '.join(p + '://' for p in PROTOCOLS)} (e.g. "
                "tcp://host:8786)")
        raise InvalidArgumentError(
            f"scheduler must be one of {', '.join(SCHEDULERS)} or an address such as "
            f"tcp://host:8786, got {scheduler!r}")
    if type(scheduler).__name__ == "Client":
        return scheduler
    raise InvalidArgumentError(f"scheduler must be a name, an address or a Client, got {scheduler!r}")


def _cuda_cluster(workers: int | None) -> Any:
    """One dask worker per GPU (dask-cuda's LocalCUDACluster); ``workers`` limits the GPUs used."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        from ..errors import BackendUnavailableError
        why = "" if isinstance(exc, ModuleNotFoundError) else f" ({exc}: a dask-cuda built " \
            "for another dask/distributed?)"
        raise BackendUnavailableError(
            f"--scheduler cuda needs dask-cuda{why}: pip install 'emarray[gpu]' (or pip install "
            "dask-cuda matching your dask)") from exc
    kwargs: dict[str, Any] = {"dashboard_address": ":0", "silence_logs": logging.WARNING}
    if workers:
        kwargs["CUDA_VISIBLE_DEVICES"] = list(range(workers))
    return LocalCUDACluster(**kwargs)


def _call_pickled(payload: bytes) -> Any:
    """Run a cloudpickled ``(func, args)`` (how calls travel to a process pool)."""
    import cloudpickle
    func, args = cloudpickle.loads(payload)
    return func(*args)


def _probe_volumes(volumes: list[Any]) -> list[str]:
    """On a worker: open each volume afresh and report any that differs from the plan."""
    import socket
    problems = []
    for v in volumes:
        try:
            v.check_handle()  # always opens afresh
        except Exception as exc:
            problems.append(f"worker {socket.gethostname()}:{os.getcwd()}: {exc}")
    return problems


class Runner:
    """Runs one task per block on the chosen scheduler, with a progress display.

    Use as a context manager: a local cluster it starts is closed on exit, and an address is
    connected to (and disconnected from) only for the job.
    """

    def __init__(self, scheduler: Any = None, workers: int | None = None,
                 progress: bool = False, desc: str = "blocks", *,
                 connect_timeout: float | None = None, window: int | None = None,
                 slurm: dict[str, Any] | None = None):
        self.scheduler = check_scheduler(scheduler)
        self.slurm = slurm
        if workers is not None and int(workers) < 1:
            raise InvalidArgumentError(f"workers must be at least 1, got {workers!r}")
        if connect_timeout is None:
            connect_timeout = DEFAULT_CONNECT_TIMEOUT
        try:
            self.connect_timeout = float(connect_timeout)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"connect timeout must be a number of seconds, got {connect_timeout!r}") from None
        if not self.connect_timeout > 0:
            raise InvalidArgumentError(
                f"connect timeout must be positive, got {connect_timeout!r}")
        self.workers = int(workers) if workers else None
        self.progress = progress
        self.desc = desc
        self.window = window
        self._client: Any = None
        self._owned: list[Any] = []
        self._slurm_settings: dict[str, Any] | None = None

    # -- connecting ------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        s = self.scheduler
        log.info("scheduler: %s", s if isinstance(s, str) else type(s).__name__)
        if isinstance(s, str) and s in LOCAL_SCHEDULERS:
            return self
        from distributed import Client, LocalCluster
        if not isinstance(s, str):
            self._client = s
        elif s == "cuda":
            self._owned.append(_cuda_cluster(self.workers))
            self._client = Client(self._owned[0])
            self._owned.insert(0, self._client)
        elif s == "slurm":
            from . import slurm
            settings = self._slurm_settings = slurm.read_settings(self.slurm)
            cluster = slurm.start_cluster(settings, self.workers)
            self._owned.append(cluster)
            self._client = Client(cluster)
            self._owned.insert(0, self._client)
            if not settings["adapt"] or settings["adapt"][0] > 0:
                # (adapt from 0 jobs starts one only once blocks are queued: the job's watch
                # waits start_timeout for it then)
                slurm.wait_for_first_worker(self._client, cluster, settings["start_timeout"])
        elif s == "local-cluster":
            cluster = LocalCluster(n_workers=self.workers or os.cpu_count() or 1,
                                   threads_per_worker=1, dashboard_address=":0",
                                   silence_logs=logging.WARNING)
            self._owned.append(cluster)
            self._client = Client(cluster)
            self._owned.insert(0, self._client)
        else:
            try:
                self._client = Client(s, timeout=f"{self.connect_timeout}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise SchedulerUnreachableError(
                    f"cannot reach the dask scheduler at {s} within {self.connect_timeout:g} s "
                    f"({type(exc).__name__}); is it running? (--connect-timeout sets the wait)"
                ) from None
            self._owned.append(self._client)
        if self.progress:
            link = getattr(self._client, "dashboard_link", None)
            print(f"dask dashboard: {link}" if link else
                  f"dask scheduler: {self._client.scheduler.address}", file=sys.stderr)
        return self

    def __exit__(self, *exc: Any) -> None:
        for obj in self._owned:
            obj.close()
        self._owned.clear()

    @property
    def distributed(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> Any:
        """The dask.distributed Client while entered (None for threads, processes, synchronous):
        pass it as the scheduler of several jobs to share one cluster."""
        return self._client

    def n_workers(self) -> int:
        if self._client is not None:
            return max(1, sum(w.get("nthreads", 1) for w in
                              self._client.scheduler_info()["workers"].values()))
        return 1 if self.scheduler == "synchronous" else (self.workers or os.cpu_count() or 1)

    def wait_for_planned(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the SLURM jobs asked for (not ``adapt``'s, which
        start with the queue) to join; return the worker threads there. An estimate samples
        on the workers the run will have, not on the first job to start."""
        import time
        s = self._slurm_settings
        if self._client is None or s is None or s["adapt"]:
            return self.n_workers()
        want, t0 = self.planned_threads(), time.monotonic()
        while self.n_workers() < want and time.monotonic() - t0 < timeout:
            time.sleep(0.2)
        return self.n_workers()

    def planned_threads(self) -> int:
        """The worker threads this job may have: those joined, or those asked of SLURM when more
        (jobs still queued, or the most ``adapt`` may start), so that the window of blocks in
        flight keeps every one busy, and shows adapt the work waiting."""
        n = self.n_workers()
        s = self._slurm_settings
        if s is not None:
            jobs = s["adapt"][1] if s["adapt"] else (s["jobs"] or self.workers or 1)
            n = max(n, jobs * s["cores"])
        return n

    def processes_per_device(self) -> int:
        """How many worker processes may share one GPU (a device memory cap is split by it)."""
        if self._client is not None:
            if self.scheduler == "cuda":
                return 1
            hosts: dict[str, int] = {}
            for w in self._client.scheduler_info()["workers"].values():
                host = w.get("host", "")
                hosts[host] = hosts.get(host, 0) + 1
            return max(hosts.values(), default=1)
        return (self.workers or os.cpu_count() or 1) if self.scheduler == "processes" else 1

    def check_volumes(self, volumes: Iterable[Any]) -> None:
        """On a cluster, make every worker open every input and refuse any mismatch, first."""
        vols = [v for v in volumes if hasattr(v, "check_handle")]
        if self._client is None or not vols:
            return
        replies = self._client.run(_probe_volumes, vols)
        problems = [p for ps in replies.values() for p in ps]
        if problems:
            raise InputChangedError(
                f"a worker cannot read the inputs this job was planned for: {problems[0]}")

    # -- running ---------------------------------------------------------------------------
    def run(self, calls: Iterable[Call], *, total: int | None = None,
            combine: Callable[[Any, Any], Any] | None = None, retries: int = 0,
            on_result: Callable[[int, Any], None] | None = None,
            name: Callable[[int], str] = lambda i: f"task {i}",
            weight: Callable[[int], int] | None = None, unit: str = "block") -> Any:
        """Run ``func(*args)`` for each call; return the results, or their ``combine``-d total.

        ``calls`` may be a lazy iterator (give ``total`` for the progress display); at most
        ``window`` calls are in flight. ``combine`` must be associative and commutative: results
        are folded in as they arrive. ``on_result(i, value)`` sees each result as it arrives
        (then nothing is kept here). A call that raises is run again up to ``retries`` times;
        then :class:`BlockFailedError` names it (``name(i)``) and the last error. The progress
        display counts ``weight(i)`` ``unit``s per call (default: one block).
        """
        if total is None and hasattr(calls, "__len__"):
            total = len(calls)  # type: ignore[arg-type]
        window = self.window or max(8, 4 * self.planned_threads())
        results: dict[int, Any] = {}
        acc: list[Any] = []

        def take(i: int, value: Any) -> None:
            if on_result is not None:
                on_result(i, value)
            elif combine is None:
                results[i] = value
            elif acc:
                acc[0] = combine(acc[0], value)
            else:
                acc.append(value)

        with Progress(total, self.desc, self.progress, unit) as bar:
            for i, value in self._completed(iter(calls), window, retries, name):
                w = weight(i) if weight is not None else 1
                take(i, value)
                bar.update(w)
        if combine is not None:
            return acc[0] if acc else None
        return None if on_result is not None else [results[i] for i in sorted(results)]

    def _completed(self, calls: Iterator[Call], window: int, retries: int,
                   name: Callable[[int], str]) -> Iterator[tuple[int, Any]]:
        if self._client is not None:
            return self._completed_distributed(calls, window, retries, name)
        if self.scheduler == "synchronous":
            return self._completed_sync(calls, retries, name)
        return self._completed_pool(calls, window, retries, name)

    @staticmethod
    def _completed_sync(calls: Iterator[Call], retries: int,
                        name: Callable[[int], str]) -> Iterator[tuple[int, Any]]:
        for i, (f, args) in enumerate(calls):
            attempt = 0
            while True:
                try:
                    value = f(*args)
                    break
                except Exception as exc:
                    _retry_or_fail(exc, attempt, retries, name(i))
                    attempt += 1
            yield i, value

    def _completed_pool(self, calls: Iterator[Call], window: int, retries: int,
                        name: Callable[[int], str]) -> Iterator[tuple[int, Any]]:
        import concurrent.futures as cf
        n = self.workers or os.cpu_count() or 1
        if self.scheduler == "processes":
            import multiprocessing

            import cloudpickle
            pool: cf.Executor = cf.ProcessPoolExecutor(
                n, mp_context=multiprocessing.get_context("spawn"))

            def submit(f: Callable, args: tuple) -> cf.Future:
                return pool.submit(_call_pickled, cloudpickle.dumps((f, args)))
        else:
            pool = cf.ThreadPoolExecutor(n, thread_name_prefix="emarray")

            def submit(f: Callable, args: tuple) -> cf.Future:
                return pool.submit(f, *args)
        pending: dict[cf.Future, tuple[int, Call, int]] = {}

        def drain() -> Iterator[tuple[int, Any]]:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                i, call, attempt = pending.pop(fut)
                exc = fut.exception()
                if exc is None:
                    yield i, fut.result()
                    continue
                _retry_or_fail(exc, attempt, retries, name(i))
                pending[submit(*call)] = (i, call, attempt + 1)
        try:
            for i, call in enumerate(calls):
                pending[submit(*call)] = (i, call, 0)
                while len(pending) >= window:
                    yield from drain()
            while pending:
                yield from drain()
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _completed_distributed(self, calls: Iterator[Call], window: int, retries: int,
                               name: Callable[[int], str]) -> Iterator[tuple[int, Any]]:
        from distributed import wait
        client = self._client
        index: dict[Any, tuple[int, Call, int]] = {}
        pending: set[Any] = set()
        it = enumerate(calls)

        def submit(i: int, call: Call, attempt: int) -> None:
            f, args = call
            fut = client.submit(f, *args, pure=False)
            index[fut.key] = (i, call, attempt)
            pending.add(fut)

        def submit_next() -> None:
            nxt = next(it, None)
            if nxt is not None:
                submit(nxt[0], nxt[1], 0)

        for _ in range(window):
            submit_next()
        watch = _WorkerWatch(client, self._lost_timeout())
        while pending:
            try:
                done, _ = wait(list(pending), timeout=2.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            if not done:
                watch.check(len(pending))
                continue
            watch.seen()
            for fut in done:
                pending.discard(fut)
                i, call, attempt = index.pop(fut.key)
                if fut.status == "error":
                    exc = fut.exception()
                    fut.release()
                    _retry_or_fail(exc, attempt, retries, name(i))
                    submit(i, call, attempt + 1)
                    continue
                if fut.status != "finished":  # lost with its worker (or cancelled): run it again
                    fut.release()
                    submit(i, call, attempt)
                    continue
                try:  # its worker may die before the result is fetched: dask recomputes it then
                    value = fut.result(timeout=5)
                except TimeoutError:
                    index[fut.key] = (i, call, attempt)
                    pending.add(fut)
                    watch.check(len(pending))
                    continue
                fut.release()
                submit_next()
                yield i, value

    def _lost_timeout(self) -> float:
        """Seconds a job waits with no dask worker left before it stops (``--scheduler slurm``:
        the SLURM start timeout, as queued replacement jobs may take that long)."""
        from .. import environment
        seconds = environment.number("EMARRAY_WORKER_TIMEOUT")
        if seconds is not None:
            return seconds
        if self.scheduler == "slurm" and self.slurm:
            return float(self.slurm.get("start_timeout") or 300)
        return DEFAULT_LOST_WORKERS_TIMEOUT


class _WorkerWatch:
    """Stops a distributed job that has had no worker for ``timeout`` seconds, with one line."""

    def __init__(self, client: Any, timeout: float):
        self.client, self.timeout = client, timeout
        self.lost_at: float | None = None
        self.ever = False  # a worker was seen (adapt from 0 jobs starts with none)

    def seen(self) -> None:
        self.lost_at = None
        self.ever = True

    def check(self, in_flight: int) -> None:
        import time
        try:
            workers = len(self.client.scheduler_info()["workers"])
        except Exception:  # the scheduler itself is gone
            workers = 0
        if workers:
            self.seen()
            return
        now = time.monotonic()
        address = getattr(self.client.scheduler, "address", "the cluster")
        if self.lost_at is None:
            self.lost_at = now
            log.warning("no dask worker is %s; waiting up to %.0f s for one",
                        "left" if self.ever else "running yet", self.timeout)
        elif now - self.lost_at >= self.timeout and not self.ever:
            raise WorkersLostError(
                f"no dask worker joined {address} within {self.timeout:g} s ({in_flight} blocks "
                "waiting); with --scheduler slurm, squeue says why the worker jobs wait (slurm "
                "start_timeout sets the wait)")
        elif now - self.lost_at >= self.timeout:
            raise WorkersLostError(
                f"every dask worker of {address} is gone and none came back within "
                f"{self.timeout:g} s ({in_flight} blocks were running); the finished blocks are "
                "kept: run the same command with --resume once workers are up")


def _retry_or_fail(exc: BaseException, attempt: int, retries: int, what: str) -> None:
    """Log a failed attempt that will be retried, or raise the error that names the block."""
    if isinstance(exc, OutputLockedError):  # the job lost its output's lock: no block may run
        raise exc
    if attempt < retries and not isinstance(exc, (InvalidArgumentError, BackendUnavailableError)):
        log.warning("%s failed (%s: %s); retrying (%d of %d)", what, type(exc).__name__, exc,
                    attempt + 1, retries)
        return
    if isinstance(exc, BlockFailedError):
        raise exc
    tries = f" after {attempt + 1} attempts" if attempt else ""
    raise BlockFailedError(f"{what} failed{tries}: {exc}") from exc
