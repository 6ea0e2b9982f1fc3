"""Refused cleanly: recipes and overrides; see :mod:`.adversarial`."""

import time

import pytest

from sfseg.cli.main import main

from .adversarial import bomb
from .probe import LD, refused

CASES = [
    ("unknown-key", lambda e: e.adapt("roundz=2"), "unknown key 'roundz'"),
    ("wrong-type", lambda e: e.adapt("rounds=x"), "expected an integer"),
    ("negative-rounds", lambda e: e.adapt("rounds=-1"), "schedule.rounds"),
    ("huge-rounds", lambda e: e.adapt("rounds=1000000"), "schedule.rounds: must be in [0, 100]"),
    ("huge-epochs", lambda e: e.adapt("epochs_per_round=100000"), "epochs_per_round: must be in"),
    ("huge-bins", lambda e: e.adapt("pseudo_labels.bins=1000000000"), "bins: must be in"),
    ("zero-batch", lambda e: e.adapt("batch_size=0"), "schedule.batch_size"),
    ("alpha-above-one", lambda e: e.adapt("pseudo_labels.alpha=1.5"), "alpha"),
    ("lr-inf", lambda e: e.adapt("optim.lr=.inf"), "not a finite number"),
    ("lr-nan", lambda e: e.adapt("optim.lr=.nan"), "not a finite number"),
    ("lr-inf-string", lambda e: e.adapt("optim.lr=inf"), "not a finite number"),
    ("lr-overflow", lambda e: e.adapt("optim.lr=1e999"), "not a finite number"),
    ("loss-weight-inf", lambda e: e.adapt("loss_weights={negative: .inf}"), "not a finite number"),
    ("negative-seed", lambda e: e.adapt("seed=-1"), "seed: must be in"),
    ("huge-seed", lambda e: e.adapt(f"seed={2**40}"), "seed: must be in"),
    ("cuda-on-a-cpu-build", lambda e: e.adapt("device=cuda"), "CUDA is not available"),
    ("unknown-device", lambda e: e.adapt("device=tpu"), "runtime.device"),
    ("empty-out", lambda e: e.adapt("out="), "out"),
    ("huge-negative-width", lambda e: e.adapt("negative_width=1000"), "negative_width: must be in"),
    ("zero-input-size", lambda e: e.adapt("input_size=[0, 0]"), "input_size"),
    ("huge-crop", lambda e: e.adapt("augment={kind: scale_crop, crop: 1000000}"), "crop: must be in"),
    ("huge-workers", lambda e: e.adapt("num_workers=100000"), "num_workers: must be in"),
    ("huge-cache", lambda e: e.adapt("logit_cache_gib=1e9"), "logit_cache_gib: must be in"),
    ("override-without-equals", lambda e: e.adapt("rounds"), "must look like key=value"),
    ("override-without-key", lambda e: e.adapt("=3"), "has no key"),
    (
        "override-alias-bomb",
        lambda e: e.adapt("losses=" + bomb(8).split("\n", 1)[0].split(": ", 1)[1]),
        "losses",
    ),
    (
        "base-not-a-string",
        lambda e: ["adapt", "--config", str(e.file("c.yaml", "_base_: 5\n"))],
        "_base_ must be",
    ),
    ("base-loop", lambda e: ["adapt", "--config", str(e.file("c.yaml", "_base_: c.yaml\n"))], "loops back"),
    ("non-string-key", lambda e: ["adapt", "--config", str(e.file("c.yaml", "1: x\n"))], "is not a name"),
    ("alias-bomb", lambda e: ["adapt", "--config", str(e.file("c.yaml", bomb()))], "c.yaml"),
    ("recursive-alias", lambda e: ["adapt", "--config", str(e.file("c.yaml", "name: &a [*a]\n"))], "c.yaml"),
    ("config-not-utf8", lambda e: ["adapt", "--config", str(e.file("c.yaml", b"name: caf\xe9\n"))], "UTF-8"),
    ("config-is-a-directory", lambda e: ["adapt", "--config", str(e.scratch)], "is not a file"),
    ("config-missing", lambda e: ["adapt", "--config", str(e.scratch / "none.yaml")], "not found"),
    ("config-bad-yaml", lambda e: ["adapt", "--config", str(e.file("c.yaml", "a: [1,\n"))], "not valid YAML"),
    ("config-a-list", lambda e: ["adapt", "--config", str(e.file("c.yaml", "- 1\n"))], "must be a mapping"),
    (
        "config-python-tag",
        lambda e: [
            "adapt",
            "--config",
            str(e.file("c.yaml", "name: !!python/object/apply:os.system [ls]\n")),
        ],
        "c.yaml",
    ),
    ("arch-kwargs-not-a-mapping", lambda e: e.source("arch_kwargs=5"), "arch_kwargs"),
    ("arch-kwargs-huge", lambda e: e.source("arch_kwargs={width: 1000000}"), "more than sfseg builds"),
    ("source-seed", lambda e: e.source("seed=-5"), "seed: must be in"),
    ("source-epochs", lambda e: e.source("epochs=100000000"), "epochs: must be in"),
]


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_recipes_refused_cleanly(env, capsys, build, expect):
    refused(capsys, env, build(env), expect)


def test_a_500_byte_alias_bomb_is_refused_in_under_a_second(tmp_path, capsys):
    text = bomb()
    assert len(text) < 500
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t0 = time.time()
    assert main(["adapt", "--config", str(path)]) == 2
    assert time.time() - t0 < 1.0
    err = capsys.readouterr().err
    assert "bomb.yaml" in err and "YAML aliases" in err and len(err) < 1000


def test_on_off_switches_accept_what_yaml_reads_as_booleans(tmp_path):
    from sfseg.config import load_config
    from sfseg.engine.training.recipe import AdaptConfig

    cfg = load_config(AdaptConfig, LD, ["runtime.channels_last=off"])
    assert cfg.runtime.channels_last == "off"
    assert load_config(AdaptConfig, LD, ["channels_last=on"]).runtime.channels_last == "on"
