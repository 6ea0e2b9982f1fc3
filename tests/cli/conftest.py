"""Fixtures of the command-line probes: a private copy of the tiny ToyCity tree and of the tiny source model
per case, and two run directories made once per session (one killed after its round-0 pseudo-labels,
one finished), copied into each case that damages them."""

from __future__ import annotations

import shutil
import signal

import pytest

from sfseg.cli.main import main

from ..conftest import sfseg_cli
from .probe import Env, adapt_args


@pytest.fixture(scope="session")
def killed_run(tiny_toycity, tiny_source, tmp_path_factory):
    """An LD run of two rounds, SIGKILLed right after its round-0 pseudo-labels were written and its
    state saved (resumable mid-round)."""
    run = tmp_path_factory.mktemp("killed") / "run"
    res = sfseg_cli(
        *adapt_args(tiny_toycity, tiny_source, run, "rounds=2"), env={"SFSEG_FAULT_KILL": "ld:labelled:0"}
    )
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    return run


@pytest.fixture(scope="session")
def finished_run(tiny_toycity, tiny_source, tmp_path_factory):
    """A finished one-round LD run that kept a validator's choice (round_0.pt, final.pt, selected.pt)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(adapt_args(tiny_toycity, tiny_source, run, "select.validator=bnm")) == 0
    return run


@pytest.fixture
def env(tiny_toycity, tiny_source, tmp_path):
    toy = tmp_path / "toy"
    shutil.copytree(tiny_toycity, toy)
    src = tmp_path / "src.pt"
    shutil.copyfile(tiny_source, src)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return Env(tmp_path, toy, src, scratch, victim)


@pytest.fixture
def killed(env, killed_run):
    """A private copy of the killed run (its recorded paths still point at the session's tiny tree)."""
    run = env.tmp / "killed"
    shutil.copytree(killed_run, run, symlinks=True)
    return run


@pytest.fixture
def finished(env, finished_run):
    run = env.tmp / "finished"
    shutil.copytree(finished_run, run, symlinks=True)
    return run
