"""claims.md from synthetic result records of the registered experiments (the claims live on the DR and NAS
table specs, so this is a cross-package test): verdicts, grouping by config, commands."""

import json
import math

from lfm_core.claims import (
    registered_claims,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_RUN,
    Group,
    combine,
    evaluate,
    verdict,
    write_claims,
)


def rec(experiment, row, column, seed, value, key="test_acc", profile="cpu", config_id=None, overrides=None,
        **params):
    """A result record; its config_id defaults to one per (profile, row, column, params, overrides)."""
    params = {"dataset": "digits", **params}
    overrides = overrides or {}
    if config_id is None:
        config_id = json.dumps([profile, row, column, params, overrides], sort_keys=True)
    config = {"experiment": experiment, "profile": profile, "row": row, "column": column, "seed": seed,
              "params": params, "overrides": overrides, "config_id": config_id}
    return {"experiment": experiment, "profile": profile, "row": row, "column": column, "seed": seed,
            "params": params, "metrics": {key: value}, "config": config, "config_id": config_id}


def series(experiment, row, column, values, **kw):
    return [rec(experiment, row, column, s, v, **kw) for s, v in enumerate(values)]


def claim(text_start):
    return next(c for c in registered_claims() if c.text.startswith(text_start))


def test_verdict_uses_the_seeds_spread():
    a = Group("t", "cpu", "A", "c", [90.0, 91.0, 92.0], [0, 1, 2], {})
    b = Group("t", "cpu", "B", "c", [80.0, 81.0, 82.0], [0, 1, 2], {})
    close = Group("t", "cpu", "C", "c", [90.5, 91.5, 89.5], [0, 1, 2], {})
    assert verdict(a, b, True) == (HOLDS, 10.0)
    assert verdict(b, a, True)[0] == FAILS
    assert verdict(a, close, True)[0] == INCONCLUSIVE  # 0.5 apart, std 1
    assert verdict(b, a, False)[0] == HOLDS  # lower is better (errors)
    one_seed = Group("t", "cpu", "D", "c", [99.0], [0], {})
    assert verdict(one_seed, b, True)[0] == INCONCLUSIVE and verdict(None, b, True)[0] == NOT_RUN
    assert combine([HOLDS, HOLDS, NOT_RUN]) == HOLDS and combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HOLDS, FAILS, INCONCLUSIVE]) == FAILS and combine([NOT_RUN]) == combine([]) == NOT_RUN


def test_flip_claim_compares_with_every_baseline_but_ours():
    epochs = {"train.epochs": 3}
    records = (series("table7", "LFM-DR", "CIFAR-10 40%", [90, 91, 92], noise="flip", overrides=epochs)
               + series("table7", "L2RW", "CIFAR-10 40%", [95, 96, 97], noise="flip", overrides=epochs)
               + series("table7", "Base Model", "CIFAR-10 40%", [70, 71, 72], noise="flip")
               + series("table7", "LFM-DR+ (ours)", "CIFAR-10 40%", [99, 99, 99], noise="flip"))
    overall, lines = evaluate(records, claim("LFM-DR is above every implemented baseline under flip"))
    assert overall == FAILS
    assert {line["worse"]: line["verdict"] for line in lines} == {"L2RW": FAILS, "Base Model": HOLDS}
    l2rw = next(line for line in lines if line["worse"] == "L2RW")
    assert l2rw["better_text"] == "91.00 ± 1.00 (n=3)" and l2rw["diff"] == -5.0
    assert l2rw["command"] == 'lfm-bench run table7 --profile cpu --set train.epochs=3 --methods "LFM-DR,L2RW" --seeds 0,1,2'


def test_seeds_group_by_config_and_the_most_faithful_profile_wins():
    records = (series("table4", "TN+DARTS", "CIFAR-100", [2.0, 2.1], key="test_err", config_id="a")
               + series("table4", "TN+DARTS", "CIFAR-100", [9.0], key="test_err", config_id="b")  # other engine
               + series("table4", "SN+DARTS", "CIFAR-100", [2.05, 2.0], key="test_err", config_id="c")
               + series("table4", "SN+DARTS", "CIFAR-100", [50.0, 60.0], key="test_err", profile="smoke"))
    overall, lines = evaluate(records, claim("two networks"))
    assert overall == INCONCLUSIVE  # digits cannot separate 2.05 from 2.025
    assert lines[0]["better_text"] == "2.05 ± 0.07 (n=2)" and lines[0]["profile"] == "cpu"


def test_rarest_class_recall_from_confusion():
    def conf_rec(row, seed, hit):
        r = rec("figure6", row, "CIFAR-10 IF 200", seed, 80.0)
        r["metrics"]["confusion"] = [[9, 1], [10 - hit, hit]]
        return r

    records = [conf_rec("Base Model", s, h) for s, h in enumerate([1, 2])] + \
              [conf_rec("LFM-DR", s, h) for s, h in enumerate([5, 6])]
    overall, lines = evaluate(records, claim("LFM-DR improves the rarest"))
    assert overall == HOLDS and lines[0]["diff"] == 40.0


def test_write_claims_lists_every_claim(tmp_path):
    records = series("table10", "LFM+DARTS+PS", "Memory (MiB)", [100, 102], key="value") + \
        series("table10", "LFM+DARTS, no PS", "Memory (MiB)", [150, 149], key="value")
    path = write_claims(records, tmp_path)
    text = path.read_text()
    assert path.name == "claims.md"
    for c in registered_claims():
        assert c.text in text
    assert "cuts search memory (Table X): holds" in text
    assert "No runs of figure4" in text and "two networks >= one network (Table IV): not run" in text
    assert not math.isnan(evaluate(records, claim("parameter sharing"))[1][0]["diff"])


def test_claims_get_a_verdict_per_standin(tmp_path):
    """Runs on two stand-ins are never mixed: each claim has a verdict on each, and the overall
    line says so when they disagree; the command reruns the stand-in that ran."""
    from lfm_core.claims import overall_verdict

    flip = "LFM-DR is above every implemented baseline under flip"
    digits = (series("table7", "LFM-DR", "CIFAR-10 40%", [90, 91, 92], noise="flip")
              + series("table7", "Base Model", "CIFAR-10 40%", [70, 71, 72], noise="flip"))
    photos = (series("table7", "LFM-DR", "CIFAR-10 40%", [50, 51, 52], noise="flip", dataset="photo_patches")
              + series("table7", "Base Model", "CIFAR-10 40%", [60, 61, 62], noise="flip", dataset="photo_patches"))
    assert evaluate(digits + photos, claim(flip), "digits")[0] == HOLDS
    overall, lines = evaluate(digits + photos, claim(flip), "photo_patches")
    assert overall == FAILS and lines[0]["better_text"] == "51.00 ± 1.00 (n=3)"
    assert "--standin photo_patches" in lines[0]["command"]
    assert overall_verdict({"digits": HOLDS, "photo_patches": FAILS}) == "differs by stand-in: digits holds, photo patches fails"
    assert overall_verdict({"digits": HOLDS, "photo_patches": HOLDS}) == HOLDS
    assert overall_verdict({"digits": NOT_RUN, "photo_patches": FAILS}) == FAILS
    text = write_claims(digits + photos, tmp_path).read_text()
    assert "| verdict on digits | verdict on photo patches | overall |" in text
    line = f"| {claim(flip).text} | Table VII | holds | fails | **differs by stand-in: digits holds, photo patches fails** |"
    assert line in text
    assert "on photo patches: fails" in text
    # runs on one stand-in only: claims.md as before
    assert "verdict on" not in write_claims(digits, tmp_path).read_text()
