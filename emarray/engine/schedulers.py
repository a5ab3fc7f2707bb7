"""Where the blocks run: dask's threads (default), processes, or a distributed cluster."""
from __future__ import annotations

import functools
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidArgumentError

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
SCHEDULERS = LOCAL_SCHEDULERS + ("local-cluster", "cuda")
_FAN_IN = 8


def check_scheduler(scheduler: Any) -> Any:
    """Validate a scheduler choice before any work; ``None`` reads ``DASK_SCHEDULER_ADDRESS``.

    Accepts a name in :data:`SCHEDULERS`, a scheduler address (``tcp://host:port``), or a
    ``distributed.Client``.
    """
    if scheduler is None:
        scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS") or "threads"
    if isinstance(scheduler, str):
        if scheduler in SCHEDULERS or "://" in scheduler:
            return scheduler
        raise InvalidArgumentError(
            f"scheduler must be one of {', '.join(SCHEDULERS)} or an address such as "
            f"tcp://host:8786, got {scheduler!r}")
    if type(scheduler).__name__ == "Client":
        return scheduler
    raise InvalidArgumentError(f"scheduler must be a name, an address or a Client, got {scheduler!r}")


def _combine_many(combine: Callable, *parts: Any) -> Any:
    acc = parts[0]
    for p in parts[1:]:
        acc = combine(acc, p)
    return acc


def _cuda_cluster(workers: int | None) -> Any:
    """One dask worker per GPU (dask-cuda's LocalCUDACluster); ``workers`` limits the GPUs used."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        from ..errors import BackendUnavailableError
        raise BackendUnavailableError(
            "--scheduler cuda needs dask-cuda: pip install 'emarray[gpu]' (or pip install "
            "dask-cuda)") from exc
    kwargs: dict[str, Any] = {"dashboard_address": ":0"}
    if workers:
        kwargs["CUDA_VISIBLE_DEVICES"] = list(range(workers))
    return LocalCUDACluster(**kwargs)


def _tree(parts: list[Any], node: Callable[..., Any]) -> Any:
    """Combine ``parts`` in a tree of fan-in :data:`_FAN_IN`; ``node(*group)`` makes one node."""
    level = parts
    while len(level) > 1:
        level = [node(*level[i:i + _FAN_IN]) for i in range(0, len(level), _FAN_IN)]
    return level[0]


class Runner:
    """Runs one task per block on the chosen scheduler, with a progress bar.

    Use as a context manager: a local cluster it starts is closed on exit, and an address is
    connected to (and disconnected from) only for the job.
    """

    def __init__(self, scheduler: Any = None, workers: int | None = None,
                 progress: bool = False, desc: str = "blocks"):
        self.scheduler = check_scheduler(scheduler)
        if workers is not None and int(workers) < 1:
            raise InvalidArgumentError(f"workers must be at least 1, got {workers!r}")
        self.workers = int(workers) if workers else None
        self.progress = progress
        self.desc = desc
        self._client = None
        self._owned: list[Any] = []

    def __enter__(self) -> "Runner":
        s = self.scheduler
        if isinstance(s, str) and s in LOCAL_SCHEDULERS:
            return self
        from distributed import Client, LocalCluster
        if not isinstance(s, str):
            self._client = s
        elif s == "cuda":
            self._owned.append(_cuda_cluster(self.workers))
            self._client = Client(self._owned[0])
            self._owned.insert(0, self._client)
        elif s == "local-cluster":
            cluster = LocalCluster(n_workers=self.workers or os.cpu_count() or 1,
                                   threads_per_worker=1, dashboard_address=":0")
            self._owned.append(cluster)
            self._client = Client(cluster)
            self._owned.insert(0, self._client)
        else:
            self._client = Client(s, timeout="10s")
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

    def _bar(self, total: int):
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=self.desc, unit="block", disable=not self.progress,
                    file=sys.stderr, dynamic_ncols=True)

    def run(self, calls: Sequence[tuple[Callable, tuple]],
            combine: Callable[[Any, Any], Any] | None = None) -> Any:
        """Run ``func(*args)`` for each call; return the results, or their ``combine``-d total."""
        if self._client is not None:
            return self._run_distributed(calls, combine)
        import dask
        from dask.callbacks import Callback
        prefix = f"emarray-block-{uuid.uuid4().hex[:12]}-"
        # each call is one opaque partial: dask must not walk the Volumes in its arguments
        tasks = [dask.delayed(functools.partial(f, *args), pure=False, traverse=False)(
                     dask_key_name=f"{prefix}{i}") for i, (f, args) in enumerate(calls)]
        if combine is not None and tasks:
            tasks = [_tree(tasks, lambda *g: dask.delayed(_combine_many, pure=False)(combine, *g))]
        bar = self._bar(len(calls))

        class _Progress(Callback):
            def _posttask(self, key, result, dsk, state, id):  # noqa: A002 (dask's name)
                if isinstance(key, str) and key.startswith(prefix):
                    bar.update(1)

        kwargs = {"scheduler": self.scheduler}
        if self.workers and self.scheduler != "synchronous":
            kwargs["num_workers"] = self.workers
        try:
            with _Progress():
                results = dask.compute(*tasks, **kwargs) if tasks else ()
        finally:
            bar.close()
        if combine is not None:
            return results[0] if results else None
        return list(results)

    def _run_distributed(self, calls: Sequence[tuple[Callable, tuple]],
                         combine: Callable | None) -> Any:
        from distributed import as_completed
        client = self._client
        futures = [client.submit(f, *args, pure=False) for f, args in calls]
        final = None
        if combine is not None and futures:
            final = _tree(futures, lambda *g: client.submit(_combine_many, combine, *g, pure=False))
        bar = self._bar(len(futures))
        try:
            for fut in as_completed(futures):
                fut.result()  # re-raises the block's error here
                bar.update(1)
        finally:
            bar.close()
        if combine is not None:
            return final.result() if final is not None else None
        return client.gather(futures)
