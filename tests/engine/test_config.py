import pytest

from sfseg.config import ConfigError, load_config, to_dict
from sfseg.engine.training.recipe import AdaptConfig, SourceConfig, config_dir


def test_unknown_key_names_the_key_and_the_valid_keys(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("roundz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(AdaptConfig, p)
    msg = str(e.value)
    assert "roundz" in msg and "rounds" in msg and "valid keys" in msg and str(p) in msg
    p.write_text("schedule: {roundz: 3}\n")
    with pytest.raises(ConfigError, match=r"roundz.*under 'schedule'.*rounds"):
        load_config(AdaptConfig, p)


def test_nested_unknown_key_and_wrong_choice():
    with pytest.raises(ConfigError, match=r"pseudo_labels.*alfa.*alpha"):
        load_config(AdaptConfig, overrides=["pseudo_labels.alfa=0.2"])
    with pytest.raises(ConfigError, match=r"bn_mode.*'train', 'frozen'"):
        load_config(AdaptConfig, overrides=["bn_mode=eval"])
    with pytest.raises(ConfigError, match=r"rounds.*integer"):
        load_config(AdaptConfig, overrides=["rounds=two"])


def test_short_override_keys_expand_to_their_group():
    cfg = load_config(AdaptConfig, overrides=["rounds=2", "optim.lr=0.5", "root=/x", "schedule.batch_size=3"])
    assert cfg.schedule.rounds == 2 and cfg.schedule.optim.lr == 0.5 and cfg.data.root == "/x"
    assert cfg.schedule.batch_size == 3
    with pytest.raises(ConfigError, match=r"'kind' is ambiguous.*augment.kind.*pseudo_labels.kind"):
        load_config(AdaptConfig, overrides=["kind=none"])


def test_overrides_and_base_inheritance():
    d = config_dir(None)
    cfg = load_config(AdaptConfig, d / "ld_nl.yaml", ["rounds=1", "optim.lr=0.5", "losses=[negative]"])
    sched, method = cfg.schedule, cfg.method
    assert sched.rounds == 1 and sched.optim.lr == 0.5 and sched.optim.head_lr_mult == 10.0  # rest inherited
    assert method.losses == ["negative"] and method.pseudo_labels.kind == "none"
    assert cfg.name == "ld_nl" and method.negative_width == 3
    assert load_config(AdaptConfig, overrides=["optim.lr=1e-4"]).schedule.optim.lr == 1e-4  # YAML 1.1 string
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(AdaptConfig, overrides=["optim.lr=fast"])


def test_every_shipped_recipe_is_valid():
    d = config_dir(None)
    recipes = sorted(p for p in d.parent.rglob("*.yaml") if "_base_" not in p.parts)
    assert len(recipes) > len(list(d.glob("*.yaml")))
    for p in recipes:
        cls = (
            SourceConfig
            if p.stem.startswith("source") and p.stem != "source_only" or p.stem == "oracle"
            else AdaptConfig
        )
        cfg = load_config(cls, p)
        assert to_dict(cfg)  # serialisable
        if cls is AdaptConfig and cfg.init_from:
            from sfseg.engine.training.recipe import recipe_path

            load_config(AdaptConfig, recipe_path(cfg.init_from))  # the first stage exists


def test_bench_matches_a_first_stage_named_by_its_path():
    from sfseg.engine.experiments.bench import _first_stage_in

    toycity = config_dir(None)
    assert _first_stage_in("ld", ["source_only", "ld", "ldbe"], toycity) == "ld"
    assert _first_stage_in("toycity/mit/ld", ["ld", "ldbe"], toycity / "mit") == "ld"
    assert _first_stage_in("toycity/mit/ld", ["ld", "ldbe"], toycity) == ""  # another recipe named ld
    assert _first_stage_in("", ["ld"], toycity) == ""
