"""Every registered experiment's spec resolves, for every profile, into configs a run can be
identified by, and names what it runs in words."""

from __future__ import annotations

import json

import pytest

from lfm_core.data import STANDINS
from lfm_core.experiments import PROFILE_NAMES, get_experiment
from lfm_core.identity import config_id
from lfm_core.registries import EXPERIMENTS
from lfm_core.runner import resolve_config, run_dir_for

NAMES = EXPERIMENTS.names()


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("name", NAMES)
def test_every_spec_resolves(name, profile, tmp_path):
    exp = get_experiment(name)
    cells = exp.cells(profile, {})
    assert exp.rows and exp.columns
    ids = set()
    for cell in cells:
        assert cell.row in exp.rows and cell.column in exp.columns
        config = resolve_config(exp, cell, profile, 0, {}, device="cpu")
        assert json.loads(json.dumps(config)) == config  # recorded as it is hashed
        assert config["config_id"] == config_id({**config, "seed": 7})  # the seed is not the identity
        assert run_dir_for(tmp_path, config).parent.name.endswith(config["config_id"])
        labels = exp.run_labels(config)
        assert all(isinstance(v, str) and v for v in labels.values())
        if profile != "paper" and cell.params.get("dataset") in STANDINS:
            assert "stand-in" in labels["data"]
        ids.add(config["config_id"])
    assert len(ids) == len(cells)  # no two cells share a run directory


@pytest.mark.parametrize("name", [n for n in NAMES if get_experiment(n).package == "lfm-dr"])
def test_an_override_changes_the_identity(name):
    exp = get_experiment(name)
    cell = exp.cells("smoke", {})[0] if exp.cells("smoke", {}) else None
    if cell is None:
        pytest.skip(f"{name} has no smoke cell on this machine")
    plain = resolve_config(exp, cell, "smoke", 0, {}, device="cpu")
    longer = resolve_config(exp, cell, "smoke", 0, {"epochs": 5}, device="cpu")
    assert plain["config_id"] != longer["config_id"] and longer["overrides"] == {"epochs": 5}
    bf16 = resolve_config(exp, cell, "smoke", 0, {}, device="cpu", mixed_precision="bf16")
    assert bf16["config_id"] != plain["config_id"]


DR_NAMES = [n for n in NAMES if get_experiment(n).package == "lfm-dr"]


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("name", DR_NAMES)
def test_every_dr_spec_resolves_on_every_standin(name, profile):
    """``--standin`` picks the embedded data of the cpu/smoke profiles; digits stays the default with
    its run identities unchanged, and every run's data label names the stand-in that ran."""
    from lfm_dr.experiments import STANDIN_TITLES, STANDINS

    exp = get_experiment(name)
    plain = {c.column + c.row: resolve_config(exp, c, profile, 0, {}, device="cpu") for c in exp.cells(profile, {})}
    for standin in STANDINS:
        options = {"standin": standin}
        if profile != "paper":  # the paper profile's validate wants CIFAR on disk
            exp.validate(profile, options)
        for cell in exp.cells(profile, options):
            config = resolve_config(exp, cell, profile, 0, options, device="cpu")
            dataset = cell.params.get("dataset")
            if profile == "paper":  # the paper profile ignores --standin: the same runs
                assert config["config_id"] == plain[cell.column + cell.row]["config_id"]
                continue
            label = exp.run_labels(config)["data"]
            if dataset in STANDINS:
                assert dataset == standin and label.startswith(STANDIN_TITLES[standin]) and "stand-in" in label
            same = config["config_id"] == plain[cell.column + cell.row]["config_id"]
            assert same == (standin == "digits" or dataset not in STANDINS)


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
@pytest.mark.parametrize("name", DR_NAMES)
def test_every_dr_experiment_takes_standin_on_the_command_line(name, profile, tmp_path):
    """``run EXP --standin photo_patches`` parses for every DR experiment (the ablation included)
    and resolves to runs on photo patches, the stand-in named in each run's data label."""
    from click.testing import CliRunner

    from lfm_core.cli import cli

    result = CliRunner().invoke(cli, ["run", name, "--profile", profile, "--standin", "photo_patches",
                                      "--results", str(tmp_path), "--print-config"])
    assert result.exit_code == 0, result.output
    configs = json.loads(result.output[result.output.index("["):])
    assert configs
    for config in configs:
        data = config["settings"]["data"]["dataset"]
        assert data in ("photo_patches", "cifar100")  # CIFAR-100 columns run only when it is on disk
        if data == "photo_patches":
            assert get_experiment(name).run_labels(config)["data"].startswith("photo patches")
