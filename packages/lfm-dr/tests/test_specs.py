"""The experiment specs hold the paper's numbers exactly as printed (spot checks of every table)."""

import pytest

from lfm_core.experiments import PaperValue, get_experiment


@pytest.mark.parametrize("name, row, column, value", [
    ("table6", "LFM-DR", "CIFAR-10 IF 200", PaperValue(73.72)),
    ("table6", "Base Model", "CIFAR-100 IF 1", PaperValue(70.50)),
    ("table6", "Meta-Net", "CIFAR-100 IF 10", PaperValue(58.46)),
    ("table7", "GLC", "CIFAR-10 40%", PaperValue(88.92, 0.24)),
    ("table7", "LFM-DR", "CIFAR-100 40%", PaperValue(60.73, 0.51)),
    ("table7", "Base Model", "CIFAR-10 0%", PaperValue(92.89, 0.32)),
    ("table8", "Meta-Net", "CIFAR-100 40%", PaperValue(58.75, 0.11)),
    ("table8", "Self-paced", "CIFAR-100 40%", PaperValue(19.08, 0.57)),
    ("table9", "LFM", "ANIMAL-10N", PaperValue(86.4)),
    ("table9", "Vgg19-BN", "ANIMAL-10N", PaperValue(79.4)),
])
def test_paper_numbers(name, row, column, value):
    assert get_experiment(name).paper[(row, column)] == value


def test_every_cell_of_the_tables_has_a_paper_number():
    """Every row but our own LFM-DR+ (beyond the paper) carries the paper's numbers."""
    for name, n in (("table6", 6 * 12), ("table7", 12 * 6), ("table8", 12 * 6), ("table9", 6)):
        exp = get_experiment(name)
        paper_rows = [r for r in exp.rows if r != "LFM-DR+ (ours)"]
        assert len(exp.paper) == n == len(paper_rows) * len(exp.columns)
