"""The NAS settings as typed dataclasses: each default once, the run config and both cache keys
derived from their fields (a new setting cannot be left out), earlier cache keys unchanged."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, asdict, dataclass, fields

import pytest

from lfm_core.errors import UsageError
from lfm_core.identity import canonical
from lfm_core.runner import resolve_config
from lfm_nas import experiments as E
from lfm_nas.cache import _key_hash, eval_key, search_key
from lfm_nas.profiles import PROFILES, EvalSettings, NASProfile, SearchSettings, set_values, settings

PARAMS = {"dataset": "digits", "method": "lfm-darts", "variant": "two", "encoder": "resnet18", "similarity": "dot",
          "drop": "none", "engine": "exact", "eval": "cifar"}


def test_the_paper_profile_is_the_defaults():
    assert PROFILES["paper"] == NASProfile(None, SearchSettings(), EvalSettings())
    # cpu: photo patches, which separate architectures (digits do not); smoke: digits, for speed
    assert (PROFILES["cpu"].data, PROFILES["smoke"].data) == ("photo_patches", "digits")
    with pytest.raises(FrozenInstanceError):
        PROFILES["cpu"].search.C = 4  # type: ignore[misc]


def test_the_record_is_every_field():
    """A run's recorded settings are every field of the two dataclasses, and read back equal."""
    for p in PROFILES.values():
        record = canonical(p.record())
        assert set(record) == {*SearchSettings.names(), *EvalSettings.names(), "search_dataset"}
        assert SearchSettings.of(record) == p.search and EvalSettings.of(record) == p.evaluation
    assert not set(SearchSettings.names()) & set(EvalSettings.names())
    assert set(PROFILES["cpu"].settable()) == set(PROFILES["cpu"].record()) - {"search_dataset"}


def test_overrides_reach_the_right_settings():
    p = settings("cpu", {"search_epochs": 1, "eval_epochs": 2, "batch_size": 8, "set": {"C": 6, "cutout": 0}})
    assert (p.search.search_epochs, p.search.pdarts_epochs, p.search.pdarts_lfm_start) == (1, 1, 0)
    assert (p.evaluation.eval_epochs, p.evaluation.imagenet_epochs) == (2, 2)
    assert (p.search.batch_size, p.search.C, p.evaluation.cutout) == (8, 6, 0)
    assert settings("cpu", {"standin": "photo_patches"}).data == "photo_patches"
    assert settings("paper", {"standin": "photo_patches"}).data is None  # the paper profile keeps its CIFAR
    with pytest.raises(UsageError, match="--set key"):
        E.Table1().validate("cpu", {"set": {"search_dataset": "photo_patches"}})  # that is --standin


def test_a_new_setting_changes_the_cache_keys():
    """Both keys take every field: a setting added to either dataclass is in its key by construction."""
    @dataclass(frozen=True)
    class WiderSearch(SearchSettings):
        new_setting: int = 1

    @dataclass(frozen=True)
    class WiderEval(EvalSettings):
        new_setting: int = 1

    search, evaluation = PROFILES["cpu"].search, PROFILES["cpu"].evaluation
    key = search_key(PARAMS, search, 0, "cpu")
    assert set(key["settings"]) == {f.name for f in fields(SearchSettings)}
    assert _key_hash(search_key(PARAMS, WiderSearch(**asdict(search)), 0, "cpu")) != _key_hash(key)
    ekey = eval_key({"normal": []}, PARAMS, evaluation, 0, "cpu")
    assert set(ekey["settings"]) == {f.name for f in fields(EvalSettings)}
    assert _key_hash(eval_key({"normal": []}, PARAMS, WiderEval(**asdict(evaluation)), 0, "cpu")) != _key_hash(ekey)


@pytest.mark.parametrize("profile, standin, search_hash, eval_hash", [
    ("smoke", None, "84195664b070630f", "c981f7389e16e8df"),
    ("cpu", "digits", "7c2c59e133091865", "4f6bbd44d8ac60aa"),
    ("cpu", None, "21d0c012f0aa1144", "6f6fb700fb459d82"),
    ("paper", None, "54b15f2ce622e8d6", "5d72e39e654e241f"),
])
def test_cache_keys_are_unchanged(profile, standin, search_hash, eval_hash):
    """Table I's LFM-DARTS-2nd-R18 keys as the hand-written key lists made them: existing caches stay
    valid (the cpu profile's digits runs, from before photo patches became its default, too)."""
    exp = E.Table1()
    options = {"standin": standin} if standin else {}
    cell = next(c for c in exp.cells(profile, options) if c.row == "LFM-DARTS-2nd-R18")
    s = resolve_config(exp, cell, profile, 0, options, device="cpu")["settings"]["settings"]
    assert _key_hash(search_key(cell.params, SearchSettings.of(s), 0, "cpu")) == search_hash
    assert _key_hash(eval_key({"x": 1}, cell.params, EvalSettings.of(s), 0, "cpu")) == eval_hash
    recorded = resolve_config(exp, cell, profile, 0, options, device="cpu")["settings"]
    assert _key_hash(exp.eval_cache_key({"x": 1}, cell.params, profile, recorded, 0, "cpu", None)) == eval_hash


def _eval_key_hash(exp, cell, changes):
    recorded = resolve_config(exp, cell, "cpu", 0, {"set": changes}, device="cpu")["settings"]
    return _key_hash(exp.eval_cache_key({"x": 1}, cell.params, "cpu", recorded, 0, "cpu", None))


def test_every_setting_the_evaluation_reads_changes_its_key():
    """Each evaluation setting, and the search's image size that the CIFAR network reads, changes
    the evaluation's key; the image size only where it differs from the profile's."""
    p = PROFILES["cpu"]
    exp = E.Table5()
    cifar, imagenet = (next(c for c in exp.cells("cpu", {}) if c.params["eval"] == kind) for kind in ("cifar", "imagenet"))
    for cell in (cifar, imagenet):
        base = _eval_key_hash(exp, cell, {})
        assert _eval_key_hash(exp, cell, {"image_size": p.search.image_size}) == base
        for name, value in asdict(p.evaluation).items():
            assert _eval_key_hash(exp, cell, {name: value + 1}) != base, name
    assert _eval_key_hash(exp, cifar, {"image_size": 12}) != _eval_key_hash(exp, cifar, {})
    assert _eval_key_hash(exp, imagenet, {"image_size": 12}) == _eval_key_hash(exp, imagenet, {})  # imagenet_size


def test_drop_path_is_refused_for_imagenet_columns():
    """The ImageNet evaluation trains without drop path (DARTS's protocol): setting it there is an error."""
    with pytest.raises(UsageError, match=r"--set drop_path=0\.3: the ImageNet evaluation \(ImageNet\)"):
        E.Table5().validate("cpu", {"set": {"drop_path": 0.3}})
    E.Table5().validate("cpu", {"set": {"drop_path": 0.3}, "only": "CIFAR"})


@pytest.mark.parametrize("given, read", [
    ({"primitives": "sep_conv_3x3, none"}, {"primitives": ("sep_conv_3x3", "none")}),
    ({"primitives": ["none", "skip_connect"]}, {"primitives": ("none", "skip_connect")}),
    ({"pdarts_layers": "3,4,5", "pdarts_skip_dropout": [0.0, 0.1, 0.2]},
     {"pdarts_layers": (3, 4, 5), "pdarts_skip_dropout": (0.0, 0.1, 0.2)}),
    ({"search_pool": None, "steps_per_epoch": 3, "eval_lr": 1, "pretrained": True},
     {"search_pool": None, "steps_per_epoch": 3, "eval_lr": 1, "pretrained": True}),
])
def test_set_values_are_read_as_their_field_types(given, read):
    assert set_values({"set": given}) == read
    p = settings("cpu", {"set": given})
    assert {k: getattr(p.search if k in SearchSettings.names() else p.evaluation, k) for k in read} == read


@pytest.mark.parametrize("given, message", [
    ({"primitives": "sep_conv_3x33"}, r"unknown --set primitives value 'sep_conv_3x33'\. Did you mean 'sep_conv_3x3'"),
    ({"primitives": 5}, r"--set primitives=5: expected a tuple of str or null"),
    ({"pdarts_layers": "3,x"}, r"--set pdarts_layers='3,x': expected a tuple of int"),
    ({"pdarts_ops": []}, r"--set pdarts_ops=\[\]: expected a tuple of int"),
    ({"search_pool": "all"}, r"--set search_pool='all': expected int or null"),
    ({"C": None}, r"--set C=null: expected int"),
    ({"C": 1.5}, r"--set C=1\.5: expected int"),
    ({"pretrained": 1}, r"--set pretrained=1: expected bool"),
    ({"eval_lr": "fast"}, r"--set eval_lr='fast': expected float"),
])
def test_bad_set_values_are_one_line_errors(given, message):
    with pytest.raises(UsageError, match=message):
        E.Table1().validate("cpu", {"set": given})
