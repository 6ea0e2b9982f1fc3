from sfseg.engine.labelling import collapse_check


def test_collapse_check_compares_against_the_start_share(capsys):
    start = {"road": 0.5, "pole": 0.1, "sky": 0.0}
    preds_only = {"pred_share": {"road": 0.6, "pole": 0.02, "sky": 0.0}}
    assert collapse_check(start, preds_only, 0.25, "round 1") == ["pole"]
    assert "pole 2.00% (was 10.00%)" in capsys.readouterr().out
    # With pseudo-labels, their share is what counts; 0.03 >= 0.25 * 0.1.
    with_pl = {"pl_share": {"road": 0.6, "pole": 0.03, "sky": 0.0}, "pred_share": preds_only["pred_share"]}
    assert collapse_check(start, with_pl, 0.25, "round 1") == []
    assert collapse_check(start, preds_only, 0.0, "round 1") == []  # disabled
