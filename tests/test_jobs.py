"""The job runner: dependencies, results, the critical path first, errors."""

import pytest

from sfseg.engine.experiments.jobs import Job, _dependents, run_jobs


def add(a, b):
    return a + b


def fail():
    raise RuntimeError("job failed")


def test_jobs_run_after_their_dependencies_and_return_results():
    order = []
    jobs = [
        Job("c", lambda: order.append("c") or 3, after=["a", "b"]),
        Job("a", lambda: order.append("a") or 1),
        Job("b", lambda: order.append("b") or 2, after=["a"]),
    ]
    assert run_jobs(jobs, 1, log=lambda s: None) == {"a": 1, "b": 2, "c": 3}
    assert order == ["a", "b", "c"]


def test_parallel_jobs_in_processes():
    jobs = [Job("x", add, (1, 2)), Job("y", add, (3, 4)), Job("z", add, (5, 6), ["x", "y"])]
    assert run_jobs(jobs, 2, log=lambda s: None) == {"x": 3, "y": 7, "z": 11}


def test_the_critical_path_is_counted_and_errors_surface():
    jobs = [Job("ld", add, (0, 0)), Job("naive", add, (0, 0)), Job("ldbe", add, (0, 0), ["ld"])]
    assert _dependents(jobs) == {"ld": 1, "naive": 0, "ldbe": 0}
    with pytest.raises(RuntimeError, match="job failed"):
        run_jobs([Job("bad", fail)], 2, log=lambda s: None)
    with pytest.raises(ValueError, match="unknown jobs"):
        run_jobs([Job("a", add, (1, 1), ["nope"])], 1)
