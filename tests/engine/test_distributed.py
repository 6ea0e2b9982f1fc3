"""Multi-process runs with torchrun on the CPU (gloo): same labels and scores as one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from sfseg.engine.training.optim import OptimConfig, build_optimizer
from sfseg.models import create_model, load_checkpoint
from tests.conftest import REPO, SMALL_MODEL, sfseg_cli

pytestmark = pytest.mark.slow


def torchrun(*args: str, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(
        [*cmd, "-m", "sfseg.cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_head_keeps_its_learning_rate_multiplier_under_ddp(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = create_model("deeplab_small", 4, width=8)
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        opt = build_optimizer(wrapped, OptimConfig(lr=0.01, head_lr_mult=10.0))
        head = {id(p) for p in model.head_parameters()}
        lrs = {g["lr"] for g in opt.param_groups if any(id(p) in head for p in g["params"])}
        assert len(lrs) == 1 and lrs.pop() == pytest.approx(0.1)
        assert len(opt.param_groups) == 2
    finally:
        dist.destroy_process_group()


def _records(run, phase):
    return [
        json.loads(x)
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["phase"] == phase
    ]


def same_pseudo_labels(one, two, count: int) -> None:
    pngs = sorted((one / "pseudo_labels" / "round_0").glob("*.png"))
    assert len(pngs) == count
    for p in pngs:
        q = two / "pseudo_labels" / "round_0" / p.name
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q))), p.name


def test_two_processes_label_like_one_with_the_default_recipe(tiny_toycity, tiny_source, tmp_path):
    """The shipped LD recipe as it is (one image per labelling forward, BatchNorm in train mode): the
    round-0 pseudo-labels of two processes equal one process's, pixel for pixel, when every process
    computes with the same number of threads (on CPUs, oneDNN's channels-last convolutions round
    differently with different thread counts: see the README)."""
    args = ["--config", "configs/toycity/ld.yaml", f"data.root={tiny_toycity}", f"checkpoint={tiny_source}",
            "rounds=1", "epochs_per_round=1", "batch_size=2", "save_pseudo_labels=true"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    res = sfseg_cli("adapt", *args, f"out={one}", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    res = torchrun("adapt", *args, f"out={two}")
    assert res.returncode == 0, res.stderr[-3000:]
    for run, processes in ((one, 1), (two, 2)):
        start = _records(run, "start")[0]
        assert (start["processes"], start["threads"]) == (processes, 1)
    a, b = _records(one, "pseudo_labels")[0], _records(two, "pseudo_labels")[0]
    assert a["thresholds"] == b["thresholds"] and a["pl_share"] == b["pl_share"]
    same_pseudo_labels(one, two, 8)


def test_two_processes_label_and_score_like_one(tiny_toycity, tiny_source, tmp_path):
    args = [
        "--config",
        "configs/toycity/ld.yaml",
        f"data.root={tiny_toycity}",
        f"checkpoint={tiny_source}",
        "rounds=1",
        "epochs_per_round=1",
        "batch_size=2",
        "eval_batch_size=2",  # 8 images: 4 batches, 2 per process
        "adabn=true",
        "amp=false",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    res = sfseg_cli("adapt", *args, f"out={one}", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    res = torchrun("adapt", *args, f"out={two}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _records(one, "start")[0]["processes"] == 1 and _records(two, "start")[0]["processes"] == 2
    # Source model and AdaBN scores (confusion matrices summed over processes; AdaBN statistics combined).
    for phase in ("source_model", "adabn"):
        a, b = _records(one, phase)[0], _records(two, phase)[0]
        assert a["miou"] == pytest.approx(b["miou"], abs=1e-6)
        assert a["per_class"] == pytest.approx(b["per_class"], abs=1e-6)
    # Round-0 thresholds and pseudo-labels: histograms summed; whole batches per process.
    a, b = _records(one, "pseudo_labels")[0], _records(two, "pseudo_labels")[0]
    assert a["thresholds"] == b["thresholds"]
    assert a["pl_share"] == b["pl_share"] and a["selected_fraction"] == b["selected_fraction"]
    same_pseudo_labels(one, two, 8)
    # The 2-process run finished; its checkpoint loads and runs in one process.
    ckpt = load_checkpoint(two / "final.pt")
    assert not any(k.startswith("module.") for k in ckpt.state_dict)
    model = ckpt.build().eval()
    assert model(torch.zeros(1, 3, 32, 64)).shape == (1, 12, 32, 64)
    assert _records(two, "done")


def test_train_source_under_torchrun(tiny_toycity, tmp_path):
    out = tmp_path / "src.pt"
    res = torchrun(
        "train-source",
        "--config",
        "configs/toycity/source.yaml",
        f"data.root={tiny_toycity}",
        f"out={out}",
        "epochs=1",
        "batch_size=2",
        "amp=false",
        SMALL_MODEL,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_checkpoint(out).provenance["source_val_miou"] >= 0


def test_two_nodes_on_the_loopback_label_and_score_like_one(tiny_toycity, tiny_source, tmp_path):
    """Two ``torchrun --nnodes 2`` launchers (one process each, gloo) meet at a c10d rendezvous on
    127.0.0.1, as two machines would at their first node's address: the same labels and scores as one
    process."""
    args = ["--config", "configs/toycity/ld.yaml", f"data.root={tiny_toycity}", f"checkpoint={tiny_source}",
            "rounds=1", "epochs_per_round=1", "batch_size=2", "eval_batch_size=2", "amp=false"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    res = sfseg_cli("adapt", *args, f"out={one}", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=sfseg-test",
                "--local_addr=127.0.0.1",
                "-m",
                "sfseg.cli.main",
                "adapt",
                *args,
                f"out={two}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in launchers]
    for p, (_, err) in zip(launchers, outputs):
        assert p.returncode == 0, err[-3000:]
    assert _records(two, "start")[0]["processes"] == 2
    a, b = _records(one, "pseudo_labels")[0], _records(two, "pseudo_labels")[0]
    assert a["thresholds"] == b["thresholds"] and a["pl_share"] == b["pl_share"]
    same_pseudo_labels(one, two, 8)
    a, b = _records(one, "source_model")[0], _records(two, "source_model")[0]
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-6)
