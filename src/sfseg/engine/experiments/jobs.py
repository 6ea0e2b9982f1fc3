"""Running many independent trainings (a benchmark's sources and adaptations) with dependencies, in
parallel processes when asked, or as tasks of a Ray cluster (:mod:`.ray_executor`).

Both executors run the same :class:`Job` list through the same scheduler (:func:`run_jobs`): a job starts
once the jobs it waits for are done, the jobs that others wait for first. An executor only starts a job
and reports when it ends.

On a small CPU machine two single-threaded processes get about 1.3x the work done of one process with two
threads (the ToyCity network's operations are too small to keep two threads busy), so ``sfseg bench
--jobs 2`` runs two trainings at a time, each on ``cores / jobs`` threads. Every job is deterministic by
its recipe, so the results do not depend on the number of jobs.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Job:
    """One unit of work: ``fn(*args)`` in a process, after the jobs named in ``after``.

    ``retry_args``: the arguments of a second attempt after the worker running it died (the Ray executor
    retries once): they make the job resume its run from its state file rather than start it again.
    ``gpus``: the GPUs it needs (a Ray task's ``num_gpus``).
    """

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    after: list[str] = field(default_factory=list)
    retry_args: tuple | None = None
    gpus: float = 0.0


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(user_threads() or threads)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when the process that started it dies (Linux), so that a
    killed ``sfseg bench`` leaves no worker training on, holding its run directory's lock. A worker
    stopped this way leaves its run resumable (``--resume``) from its last finished round."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers end when their parent's pipe closes
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _with_threads(threads: int, fn: Callable[..., Any], *args) -> Any:
    """Run ``fn`` on ``threads`` intra-op threads (a job alone on the machine gets all the cores), or on
    the user's ``OMP_NUM_THREADS`` when it is set."""
    torch.set_num_threads(user_threads() or threads)
    return fn(*args)


def user_threads() -> int | None:
    """The thread count the user asked for with ``OMP_NUM_THREADS`` (None when unset or unusable)."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


class LocalExecutor:
    """``workers`` fresh processes (``spawn``) on this machine, the cores shared by the running jobs."""

    def __init__(self, workers: int):
        self.workers, self.cores = workers, len(os.sched_getaffinity(0))
        self.pool = cf.ProcessPoolExecutor(
            workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(max(1, self.cores // workers), os.getpid()),
        )

    def capacity(self) -> int:
        return self.workers

    def submit(self, job: Job, running: int, retry: bool) -> cf.Future:
        # Cores are shared by the jobs running now: one job alone (the last stage of a chain, say LDBE's BE
        # after LD) gets them all.
        share = max(1, self.cores // max(1, running))
        return self.pool.submit(_with_threads, share, job.fn, *(job.retry_args if retry else job.args))

    def wait(self, handles: list) -> list:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle: cf.Future) -> Any:
        return handle.result()  # re-raises a job's error here

    def worker_died(self, error: BaseException) -> bool:
        return False  # a dead local worker breaks the pool: the bench stops and --resume continues it

    def close(self) -> None:
        self.pool.shutdown()


def run_jobs(
    jobs: list[Job], workers: int = 1, log: Callable[[str], None] = print, executor=None
) -> dict[str, Any]:
    """Run every job once its dependencies are done; return ``{key: result}``.

    ``executor`` None with ``workers`` 1 runs them in this process, in order; with more, that many at a
    time in fresh processes (:class:`LocalExecutor`, each with ``cores // workers`` threads). A
    :class:`~.ray_executor.RayExecutor` runs them as Ray tasks. The first failure stops the run (jobs
    already started finish) and is raised; a job whose worker died is retried once (Ray) with its
    ``retry_args``.
    """
    _check(jobs)
    t0 = time.time()
    if executor is None and workers <= 1:
        results: dict[str, Any] = {}
        for j in _ordered(jobs):
            results[j.key] = j.fn(*j.args)
            log(f"[{time.time() - t0:6.0f} s] done: {j.key}")
        return results
    executor = executor or LocalExecutor(workers)
    try:
        return _schedule(jobs, executor, lambda key: log(f"[{time.time() - t0:6.0f} s] {key}"))
    finally:
        executor.close()


def _check(jobs: list[Job]) -> None:
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("job keys must be unique")
    known = set(keys)
    for j in jobs:
        missing = [a for a in j.after if a not in known]
        if missing:
            raise ValueError(f"job {j.key} waits for unknown jobs {missing}")


def _schedule(jobs: list[Job], executor, log: Callable[[str], None]) -> dict[str, Any]:
    """The one scheduler: start ready jobs up to the executor's capacity, the critical path first."""
    results: dict[str, Any] = {}
    waiting_on = _dependents(jobs)
    pending = {j.key: j for j in jobs}
    running: dict[Any, tuple[Job, bool]] = {}  # handle -> (job, is a retry)
    while pending or running:
        ready = [j for j in pending.values() if all(a in results for a in j.after)]
        # Jobs that others wait for first (the critical path: LD before naive self-training when LDBE
        # waits for LD), then in the given order.
        ready.sort(key=lambda j: -waiting_on[j.key])
        starting = ready[: max(0, executor.capacity() - len(running))]
        for j in starting:
            running[executor.submit(j, len(running) + len(starting), retry=False)] = (j, False)
            del pending[j.key]
        if not running:
            raise RuntimeError(f"jobs cannot start (dependency cycle?): {sorted(pending)}")
        for handle in executor.wait(list(running)):
            job, retried = running.pop(handle)
            try:
                results[job.key] = executor.result(handle)
            except Exception as e:
                if retried or not executor.worker_died(e):
                    raise
                log(f"retrying: {job.key} (its worker died: {type(e).__name__}); it resumes from its state")
                running[executor.submit(job, len(running) + 1, retry=True)] = (job, True)
                continue
            log(f"done: {job.key}")
    return results


def _dependents(jobs: list[Job]) -> dict[str, int]:
    """How many jobs wait, directly or not, for each job."""
    direct: dict[str, set[str]] = {j.key: set() for j in jobs}
    for j in jobs:
        for a in j.after:
            direct[a].add(j.key)

    def closure(key: str, seen: set[str]) -> set[str]:
        for d in direct[key] - seen:
            seen.add(d)
            closure(d, seen)
        return seen

    return {k: len(closure(k, set())) for k in direct}


def _ordered(jobs: list[Job]) -> list[Job]:
    """Jobs in an order that respects ``after`` (stable otherwise)."""
    out, done, todo = [], set(), list(jobs)
    while todo:
        for j in todo:
            if all(a in done for a in j.after):
                out.append(j)
                done.add(j.key)
                todo.remove(j)
                break
        else:
            raise RuntimeError(f"dependency cycle among {[j.key for j in todo]}")
    return out
