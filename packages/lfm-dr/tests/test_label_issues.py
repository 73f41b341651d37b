"""Finding mislabelled examples: the API on digits with known flips, and the lfm-dr CLI."""

import csv

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from lfm_core.data import load_dataset, make_splits
from lfm_dr import fit, find_label_issues
from lfm_dr.cli import main
from lfm_dr.label_issues import CANDIDATES, PROBE_CORRUPTED, PROBE_SHARE, auroc, auroc_standard_error, choose_score

TINY = {"width": 4, "blocks_per_stage": 1}


@pytest.fixture(scope="module")
def digits_with_flips():
    bundle = load_dataset("digits", image_size=8)
    return make_splits(bundle, 5, seed=0, noise="flip", noise_rate=0.3, max_train=300)


def test_scores_rank_the_flipped_digits_first(digits_with_flips):
    sp = digits_with_flips
    noisy = sp.train.labels != sp.train.clean_labels
    assert 40 < int(noisy.sum()) < 140
    res = find_label_issues(sp.train, sp.meta, 10, epochs=2, batch_size=50, model_kwargs=TINY)
    n = len(sp.train)
    assert res.scores.shape == (n,) and torch.isfinite(res.scores).all()
    assert sorted(res.ranked.tolist()) == list(range(n))
    assert (res.scores[res.ranked][:-1] >= res.scores[res.ranked][1:]).all()  # decreasing suspicion
    assert torch.equal(res.given_labels, sp.train.labels)
    assert res.suggested_labels.shape == (n,) and 0 <= int(res.suggested_labels.min()) <= int(res.suggested_labels.max()) < 10
    # score="auto": the first candidate within one standard error of the best on the corrupted probes
    assert res.score_name in res.probe_auroc and torch.equal(res.scores, res.candidates[res.score_name])
    n_probes = 10 * int(5 * PROBE_SHARE)
    n_bad = round(n_probes * PROBE_CORRUPTED)
    top = max(res.probe_auroc.values())
    floor = top - auroc_standard_error(top, n_bad, n_probes - n_bad)
    assert res.score_name == next(k for k in CANDIDATES if res.probe_auroc[k] >= floor)
    assert auroc(res.scores, noisy) > 0.85
    # the top-k suspects (k = number of flips) are mostly flips; chance would be ~30%
    k = int(noisy.sum())
    assert float(noisy[res.ranked[:k]].float().mean()) > 0.6
    # every candidate is a per-example score; the fixed pixel encoder and r are handed back
    assert all(v.shape == (n,) for v in res.candidates.values())
    assert res.r.shape == (len(sp.meta) - 10 * int(5 * PROBE_SHARE),)  # r of the meta examples that stayed meta
    assert not torch.allclose(res.r, torch.ones_like(res.r))
    assert res.encoder(sp.train.images[:3]).shape[0] == 3


def test_auroc_standard_error_matches_the_spread_of_sampled_aurocs():
    # 4000 draws of 25 + 25 scores from two normals one and a half sd apart (AUROC about 0.86)
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.5, 1, (4000, 25)), rng.normal(0, 1, (4000, 25))
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg], axis=1), axis=1), axis=1) + 1
    areas = (ranks[:, :25].sum(1) - 25 * 26 / 2) / 625
    assert auroc_standard_error(float(areas.mean()), 25, 25) == pytest.approx(areas.std(), rel=0.15)
    assert auroc_standard_error(1.0, 25, 25) == 0.0
    assert auroc_standard_error(0.8, 10, 10) > auroc_standard_error(0.8, 40, 40)


def _swapped(pairs):
    """25 positives above 25 negatives, with the given (positive, negative) positions swapped."""
    s = torch.cat([torch.linspace(1, 2, 25), torch.linspace(0, 1, 25)])
    for i, j in pairs:
        s[i], s[j] = s[j].clone(), s[i].clone()
    return s


def test_choose_score_prefers_the_earlier_candidate_within_one_standard_error():
    corrupted = torch.tensor([True] * 25 + [False] * 25)
    scores = {k: torch.arange(50.0) % 2 for k in CANDIDATES}  # chance
    scores["w2_loss_avg"] = _swapped([(0, 49), (1, 48), (2, 47)])  # the best, 0.986 (SE 0.017)
    scores["w2_margin_avg"] = _swapped([(0, 49), (1, 48), (2, 47), (3, 46)])  # 0.975, earlier in CANDIDATES
    name, aurocs = choose_score(scores, corrupted)
    assert aurocs["w2_loss_avg"] > aurocs["w2_margin_avg"] > aurocs["w2_loss_avg"] - 0.017
    assert name == "w2_margin_avg"
    # beyond one standard error of the best it is not chosen, however early it comes
    scores["w2_margin_avg"] = _swapped([(i, 49 - i) for i in range(7)])  # 0.922
    assert choose_score(scores, corrupted)[0] == "w2_loss_avg"


def test_unknown_score_is_a_one_line_usage_error(digits_with_flips):
    from lfm_core.errors import UsageError

    sp = digits_with_flips
    with pytest.raises(UsageError, match="unknown label-issue score .nope.. Valid choices: auto, w2_margin_avg, combined"):
        find_label_issues(sp.train.subset(np.arange(60)), sp.meta, 10, epochs=1, batch_size=30,
                          model_kwargs=TINY, score="nope")


def test_fit_result_exposes_the_encoder_and_r(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 3, 8, 8, generator=g), torch.randint(0, 3, (60,), generator=g)
    result = fit(TensorDataset(x[:45], y[:45]), TensorDataset(x[45:], y[45:]), num_classes=3, epochs=1,
                 batch_size=15, model_kwargs=TINY, run_dir=tmp_path / "run")
    assert result.r.shape == (15,) and result.encoder is not None
    assert result.encoder(x[:2]).shape == (2, result.encoder.num_features)


# -- the CLI on a generated image folder ----------------------------------------------------
def _write_folder(root, counts: dict[str, int], seed: int = 0):
    """Class c: a bright band at rows 2c..2c+2 of a 12x12 image, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 60, (12, 12, 3)).astype(np.uint8)
            img[4 * c:4 * c + 4] = 230
            Image.fromarray(img).save(root / name / f"{name}_{i}.png")
    return root


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    return exc.value.code, capsys.readouterr()


def test_cli_writes_a_ranked_csv(tmp_path, capsys):
    train = _write_folder(tmp_path / "train", {"cat": 8, "dog": 8, "fox": 8})
    meta = _write_folder(tmp_path / "meta", {"cat": 3, "dog": 3, "fox": 3}, seed=1)
    # two mislabelled files: a fox band filed under cat, a cat band under dog
    (train / "fox" / "fox_0.png").rename(train / "cat" / "wrong_fox.png")
    (train / "cat" / "cat_0.png").rename(train / "dog" / "wrong_cat.png")
    out = tmp_path / "issues.csv"
    code, cap = _run(["find-issues", "--train", str(train), "--meta", str(meta), "--out", str(out),
                      "--epochs", "2", "--image-size", "12", "--batch-size", "8", "--width", "4", "--blocks", "1"],
                     capsys)
    assert code == 0, cap.err
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "given_label", "suggested_label", "score", "rank"]
    assert len(rows) == 24 and [int(r["rank"]) for r in rows] == list(range(1, 25))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["given_label"] for r in rows} == {"cat", "dog", "fox"}
    top2 = {r["path"].rsplit("/", 1)[-1] for r in rows[:2]}
    assert top2 == {"wrong_fox.png", "wrong_cat.png"}
    assert "wrote" in cap.out and str(out) in cap.out


@pytest.mark.parametrize("breakage, message", [
    ("missing", "--train folder .* does not exist"),
    ("meta_lacks_class", "class 'fox' of --train .* has no folder in --meta"),
    ("meta_extra_class", "class 'owl' of --meta .* is not a class of --train"),
    ("not_an_image", "notes.txt is not an image file; valid extensions: .png"),
    ("empty_class", "class folder .*fox is empty"),
    ("bad_device", "unknown --device 'foo'; valid choices: cpu, cuda"),
])
def test_cli_bad_folders_give_one_line_errors(tmp_path, capsys, breakage, message):
    import re

    train = _write_folder(tmp_path / "train", {"cat": 2, "dog": 2, "fox": 2})
    meta = _write_folder(tmp_path / "meta", {"cat": 1, "dog": 1, "fox": 1})
    if breakage == "missing":
        train = tmp_path / "nowhere"
    elif breakage == "meta_lacks_class":
        for f in (meta / "fox").iterdir():
            f.unlink()
        (meta / "fox").rmdir()
    elif breakage == "meta_extra_class":
        _write_folder(meta, {"owl": 1})
    elif breakage == "not_an_image":
        (train / "dog" / "notes.txt").write_text("hello")
    elif breakage == "empty_class":
        for f in (train / "fox").iterdir():
            f.unlink()
    out = tmp_path / "issues.csv"
    extra = ["--device", "foo"] if breakage == "bad_device" else []
    code, cap = _run(["find-issues", "--train", str(train), "--meta", str(meta), "--out", str(out), *extra], capsys)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), cap.err
    assert "Traceback" not in cap.err and not out.exists()


# -- data-driven choices read the training and meta sets only ------------------------------------
def test_auto_choices_never_read_the_test_set(digits_with_flips):
    """LFM-DR+'s encoder="auto" and the finder's score="auto" are functions of train and meta: hiding
    the test set (None) or scrambling its labels changes neither choice."""
    import copy
    from types import SimpleNamespace

    from lfm_dr.experiments import auto_encoder
    from lfm_dr.train import TrainConfig

    sp = digits_with_flips
    scrambled = copy.copy(sp.test).with_labels(torch.zeros(len(sp.test), dtype=torch.long))
    chosen = []
    for test in (sp.test, None, scrambled):
        splits = SimpleNamespace(train=sp.train, meta=sp.meta, test=test, num_classes=10, info={})
        cfg = TrainConfig(method="lfm_plus", device="cpu", options={"encoder": "auto", "similarity": "dot"})
        chosen.append((auto_encoder(cfg, splits, "cpu", seed=0), cfg.options["encoder"]))
    assert chosen[0] == chosen[1] == chosen[2]
    record, encoder = chosen[0]
    assert record["encoder_chosen"] == encoder in ("smallcnn", "pixels")
    assert record[f"encoder_auroc_{encoder}"] == max(record["encoder_auroc_smallcnn"], record["encoder_auroc_pixels"])
    # on digits pixel correlation is a near-perfect nearest-neighbour vote; a random CNN's is not
    assert record["encoder_auroc_pixels"] > 0.8 > record["encoder_auroc_smallcnn"]
    # a concrete encoder is left alone; a method built with "auto" says where it is resolved
    plain = TrainConfig(method="lfm_plus", options={"encoder": "pixels"})
    assert auto_encoder(plain, sp, "cpu", seed=0) == {} and plain.options == {"encoder": "pixels"}


def test_probes_come_from_the_meta_set_only():
    from lfm_dr.label_issues import PROBE_CORRUPTED, make_probes

    y = torch.arange(10).repeat_interleave(10)
    idx, labels, bad = make_probes(y, 10, seed=3)
    assert len(idx) == 10 * int(10 * PROBE_SHARE) and bool((idx < len(y)).all())
    assert torch.bincount(y[idx], minlength=10).tolist() == [int(10 * PROBE_SHARE)] * 10  # per class
    assert int(bad.sum()) == round(len(idx) * PROBE_CORRUPTED)
    assert bool((labels[bad] != y[idx][bad]).all()) and bool((labels[~bad] == y[idx][~bad]).all())
    again = make_probes(y, 10, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (idx, labels, bad)))
    assert make_probes(y[y != 0].clone().index_put_((torch.tensor([0]),), torch.tensor(0)), 10, 0) is None


def test_a_diverged_run_is_an_error_not_scores(digits_with_flips):
    """Non-finite steps in a row stop the finder with one line, as they stop the DR trainer."""
    from lfm_core.errors import NonFiniteError
    from lfm_dr.label_issues import train_loop
    from lfm_dr.train import TrainConfig

    sp = digits_with_flips
    cfg = TrainConfig(method="ce", model_kwargs=TINY, epochs=1, batch_size=50, device="cpu")
    with pytest.raises(NonFiniteError, match="5 non-finite steps in a row at label-issue training epoch 0 step 4"):
        train_loop(cfg, sp, 0, step=lambda *args: False)
    with pytest.raises(NonFiniteError, match=r"non-finite steps in a row .*\(method lfm, lr nan\)"):
        find_label_issues(sp.train, sp.meta, 10, epochs=1, batch_size=50, model_kwargs=TINY, lr=float("nan"))
