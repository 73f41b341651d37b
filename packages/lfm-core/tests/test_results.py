"""Reading finished runs back: a result.json of an older format is named in one line, never read."""

import json

import pytest

from lfm_core.results import collect_results, load_results
from lfm_core.validate import ResultFileError, read_result

RECORD = {"experiment": "table7", "profile": "cpu", "row": "Base Model", "column": "CIFAR-10 40%",
          "params": {"method": "ce"}, "seed": 0, "metrics": {"test_acc": 71.0}}
CONFIG = {"experiment": "table7", "profile": "cpu", "settings": {"train": {"epochs": 12}}}


def write(root, name, record):
    path = root / name / "seed0" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return path


def test_a_result_without_config_id_is_skipped_with_one_line(tmp_path, capsys):
    old = write(tmp_path, "old", {**RECORD, "options": {"noise": "flip"}})
    write(tmp_path, "new", {**RECORD, "seed": 1, "config": CONFIG, "config_id": "abc123"})
    records = collect_results(tmp_path)
    assert [r["config_id"] for r in records] == ["abc123"]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"warning: skipping {old}: written by an older lfm-bench, without its config and config_id: "
                    "run it again")
    frame = load_results(records)
    assert frame["settings.train.epochs"].tolist() == [12] and frame["test_acc"].tolist() == [71.0]


def test_resuming_over_an_old_result_names_the_file_and_the_fix(tmp_path):
    old = write(tmp_path, "old", RECORD)
    with pytest.raises(ResultFileError, match="older lfm-bench.*--force") as info:
        read_result(old, "test_acc")
    assert str(old) in str(info.value) and "\n" not in str(info.value)
