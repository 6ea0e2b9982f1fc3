"""The bench's jobs as tasks of a Ray cluster (``sfseg bench --executor ray``).

Each job (a source model, an oracle, an adaptation) is one Ray task that declares its CPUs and GPUs; the
scheduler of :mod:`.jobs` decides what starts when, so the dependencies (a source model before its
adaptations, LD before LDBE) and the results are those of the local executor. A task whose worker dies
(a killed process, a lost node) is retried once with the job's ``retry_args``: it resumes its run from the
state file it left, it does not start again.

Storage. Every node reads the data and writes the runs itself, so the data root(s) and ``--out`` must be
the same paths on every node (a shared file system: NFS, Lustre, a cloud file store), and sfseg must be
installed in every node's Python environment. Before the first task, one probe task per node checks that
it sees the paths and a marker file the driver has just written in ``--out``; a node that does not is one
error naming the node and the path, before any training starts. ``--resume`` works across executors: a run
directory written by one is resumed or reused by the other.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from sfseg.engine.experiments.jobs import Job, _with_threads
from sfseg.errors import ConfigError, SfsegError


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'sfseg[ray]'") from None
    return ray


def _probe(paths: list[str], marker: str) -> dict:
    """On one node: which of ``paths`` it cannot see, and whether it sees the driver's ``marker``."""
    import socket

    return {
        "node": socket.gethostname(),
        "missing": [p for p in paths if not Path(p).exists()],
        "marker": Path(marker).is_file(),
    }


class RayExecutor:
    """Run jobs as Ray tasks on the cluster at ``address`` (``auto``: the one this machine belongs to;
    empty: a local one started for this bench and stopped after).

    Args:
        address: as ``ray.init(address=...)``.
        cpus_per_job: each task's ``num_cpus`` (and the threads it uses).
        gpus_per_job: each task's ``num_gpus`` (a job's own ``gpus`` when it declares more); on a GPU node
            Ray then sets ``CUDA_VISIBLE_DEVICES`` so that the run's ``cuda`` device is its own GPU.
        max_running: at most this many tasks submitted at once (0: as many as are ready; Ray queues them
            until a node has the resources).
        shared: paths every node must see (the data roots and ``--out``); checked before the first task.
    """

    def __init__(
        self,
        address: str = "",
        cpus_per_job: int = 1,
        max_running: int = 0,
        shared=(),
        gpus_per_job: float = 0,
    ):
        ray = self.ray = _ray()
        self.cpus, self.gpus = cpus_per_job, gpus_per_job
        self.max_running = max_running
        self.started_here = not ray.is_initialized()
        if self.started_here:
            try:
                ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"--address {address or '(local)'}: cannot connect to Ray: {e}") from None
        self._remote = ray.remote(_with_threads)
        self._check_storage([Path(p) for p in shared])

    def _check_storage(self, shared: list[Path]) -> None:
        if not shared:
            return
        out = shared[-1]
        out.mkdir(parents=True, exist_ok=True)
        marker = out / f".sfseg-ray-probe-{uuid.uuid4().hex}"
        marker.write_text("written by the driver\n")
        try:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            probe = self.ray.remote(num_cpus=0)(_probe)
            nodes = [n["NodeID"] for n in self.ray.nodes() if n.get("Alive")]
            refs = [
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
                    [str(p.resolve()) for p in shared], str(marker.resolve())
                )
                for n in nodes
            ]
            for seen in self.ray.get(refs):
                if seen["missing"] or not seen["marker"]:
                    what = seen["missing"] or [str(out)]
                    raise SfsegError(
                        f"Ray node {seen['node']} does not see {what[0]} as this machine does: the data and "
                        "--out must be on storage shared by every node, at the same path (docs/usage.md, "
                        "'Beyond one machine')"
                    )
        finally:
            marker.unlink(missing_ok=True)

    def capacity(self) -> int:
        return self.max_running or 10**6

    def submit(self, job: Job, running: int, retry: bool) -> Any:
        args = job.retry_args if retry and job.retry_args is not None else job.args
        task = self._remote.options(num_cpus=self.cpus, num_gpus=max(job.gpus, self.gpus), max_retries=0)
        return task.remote(self.cpus, job.fn, *args)

    def wait(self, handles: list) -> list:
        done, _ = self.ray.wait(handles, num_returns=1)
        return done

    def result(self, handle) -> Any:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None  # the job's own error, as the local executor raises it

    def worker_died(self, error: BaseException) -> bool:
        ex = self.ray.exceptions
        died = tuple(
            getattr(ex, n)
            for n in ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError")
            if hasattr(ex, n)
        )
        return isinstance(error, died)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def ray_executor(address: str, cpus_per_job: int, max_running: int, shared: list, gpus_per_job: float = 0):
    """The executor of ``sfseg bench --executor ray``."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    return RayExecutor(address, cpus_per_job, max_running, shared, gpus_per_job)
