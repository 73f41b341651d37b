"""The paper's NAS tables (I-V, X) and figures (4-5) as registered experiments.

Every cell is one architecture search (:func:`lfm_nas.search.search`) followed by one
evaluation of the derived genotype trained from scratch (:func:`lfm_nas.search.train_eval`,
or :func:`lfm_nas.evaluation.train_eval_imagenet` for the ImageNet transfer columns). Each table
is a spec: rows (``row_specs``: method, encoder, variant), columns (``column_specs``: data set,
evaluation, measure), the paper's numbers and the paper's claims about it; the profiles are data
in :mod:`lfm_nas.profiles`.
What a run really does is resolved into its config (``resolve``) and read back from there.

A search or an evaluation with identical settings and seed is computed once per results root
and reused by every cell that needs it (:mod:`lfm_nas.cache`; e.g. table I's LFM-DARTS-2nd-R18
search serves table IV's TN+DARTS and table X's "no PS" row, as in the paper where these are the
same runs); ``--no-reuse`` turns that off.
"""

from __future__ import annotations

from typing import Any

from lfm_core.claims import Claim, error_below
from lfm_core.data import STANDIN_TITLES
from lfm_core.experiments import Cell
from lfm_core.paper import paper_table
from lfm_nas.nas_experiment import NASExperiment, spec
from lfm_nas.profiles import settings


def imagenet_standin(profile: str, options: dict) -> str:
    """What the ImageNet network trains on under a stand-in profile, e.g. "photo patches at 32x32"."""
    p = settings(profile, options)
    size = p.evaluation.imagenet_size
    return f"{STANDIN_TITLES[p.data]} at {size}x{size}"


# ------------------------------------------------------------------------------------
# Tables I and II: CIFAR-100 / CIFAR-10 test error
# ------------------------------------------------------------------------------------
BASE_SPECS = {
    "DARTS-2nd": spec("darts2"),
    "LFM-DARTS-2nd-R18": spec("lfm-darts", "resnet18"),
    "PDARTS": spec("pdarts"),
    "LFM-PDARTS-R18": spec("lfm-pdarts", "resnet18"),
    "LFM-PDARTS-R34": spec("lfm-pdarts", "resnet34"),
}

T1_ROWS = ["ResNet", "DenseNet", "PNAS", "ENAS", "AmoebaNet", "GDAS", "R-DARTS", "DARTS-", "DARTS+", "DropNAS",
           "Random search", "Random sampling", "DARTS-2nd", "LFM-DARTS-2nd-R18", "PDARTS", "LFM-PDARTS-R18",
           "LFM-PDARTS-R34"]


class Table1(NASExperiment):
    """CIFAR-100 test error of DARTS-2nd, P-DARTS and their LFM versions (ResNet-18/34 encoders)."""

    name = "table1"
    title = "Test error (%) on CIFAR-100"
    rows = T1_ROWS
    columns = ["CIFAR-100"]
    row_specs = BASE_SPECS
    column_specs = {"CIFAR-100": {"dataset": "cifar100"}}
    cited_rows = tuple(r for r in T1_ROWS if r not in BASE_SPECS)
    claims = (Claim("LFM-DARTS / LFM-PDARTS beat DARTS / P-DARTS", "Tables I-III",
                    (error_below("table1", "LFM-DARTS-2nd-R18", "DARTS-2nd", ("CIFAR-100",)),
                     error_below("table1", "LFM-PDARTS-R18", "PDARTS", ("CIFAR-100",)),
                     error_below("table2", "LFM-DARTS-2nd-R18", "DARTS-2nd", ("CIFAR-10",)),
                     error_below("table2", "LFM-PDARTS-R18", "PDARTS", ("CIFAR-10",)),
                     error_below("table3", "LFM-DARTS-2nd-CIFAR10", "DARTS2nd-CIFAR10", ("Top-1 Error (%)",)),
                     error_below("table3", "LFM-PDARTS-CIFAR10", "PDARTS (CIFAR10)", ("Top-1 Error (%)",)))),)
    paper = paper_table(T1_ROWS, ["CIFAR-100"], """
22.10
17.18
19.53
19.43
18.93
18.38
18.01±0.26
17.51±0.25
17.11±0.43
16.39
21.92±0.34
21.37±0.48
20.58±0.44
17.65±0.45
17.49
16.44±0.11
15.69±0.15
""")


T2_ROWS = ["DenseNet", "HierEvol", "PNAS", "ENAS", "NASNet-A", "AmoebaNet-B", "R-DARTS", "GTN", "BayesNAS",
           "MergeNAS", "NoisyDARTS", "ASAP", "SDARTS", "DropNAS", "DrNAS", "Random search", "Random sampling",
           "DARTS-2nd", "LFM-DARTS-2nd-R18", "PDARTS", "LFM-PDARTS-R18"]


class Table2(NASExperiment):
    """CIFAR-10 test error of DARTS-2nd, P-DARTS and their LFM versions (ResNet-18 encoder)."""

    name = "table2"
    title = "Test error (%) on CIFAR-10"
    rows = T2_ROWS
    columns = ["CIFAR-10"]
    row_specs = {k: v for k, v in BASE_SPECS.items() if k != "LFM-PDARTS-R34"}
    column_specs = {"CIFAR-10": {"dataset": "cifar10"}}
    cited_rows = tuple(r for r in T2_ROWS if r not in BASE_SPECS)
    paper = paper_table(T2_ROWS, ["CIFAR-10"], """
3.46
3.75±0.12
3.41±0.09
2.89±0.13
2.65±0.05
2.55±0.05
2.95±0.21
2.92±0.06
2.81±0.04
2.73±0.02
2.70±0.23
2.68±0.11
2.61±0.02
2.58±0.14
2.54±0.03
3.07±0.17
2.75±0.09
2.76±0.09
2.70±0.06
2.50
2.46±0.04
""")


# ------------------------------------------------------------------------------------
# Table III: ImageNet transfer
# ------------------------------------------------------------------------------------
T3_ROWS = ["Inception-v1", "MobileNet", "ShuffleNet 2x (v1)", "ShuffleNet 2x (v2)", "NASNet-A", "PNAS",
           "MnasNet-92", "AmoebaNet-C", "SNAS-CIFAR10", "PARSEC-CIFAR10", "DSNAS-ImageNet", "SDARTS-ADV-CIFAR10",
           "FairDARTS-ImageNet", "DrNAS-ImageNet", "ProxlessNAS-ImageNet", "GDAS-CIFAR10", "DARTS2nd-CIFAR10",
           "LFM-DARTS-2nd-CIFAR10", "PDARTS (CIFAR10)", "LFM-PDARTS-CIFAR10", "PDARTS (CIFAR100)",
           "LFM-PDARTS-CIFAR100"]
T3_COLS = ["Top-1 Error (%)", "Top-5 Error (%)"]
T3_SPECS = {
    "DARTS2nd-CIFAR10": spec("darts2"),
    "LFM-DARTS-2nd-CIFAR10": spec("lfm-darts", "resnet18"),
    "PDARTS (CIFAR10)": spec("pdarts"),
    "LFM-PDARTS-CIFAR10": spec("lfm-pdarts", "resnet18"),
    "PDARTS (CIFAR100)": spec("pdarts"),
    "LFM-PDARTS-CIFAR100": spec("lfm-pdarts", "resnet18"),
}


class Table3(NASExperiment):
    """ImageNet top-1/top-5 error of cells searched on CIFAR-10/100 (DARTS-2nd, P-DARTS, LFM).

    cpu/smoke: a stand-in transfer evaluation: the searched cell in the ImageNet network (its
    3-convolution stem) trained and tested on the stand-in at twice the search resolution. With its
    10 classes top-5 error is close to 0; only the paper profile measures ImageNet.
    """

    name = "table3"
    title = "Test error (%) on ImageNet (top-1 / top-5)"
    rows = T3_ROWS
    columns = T3_COLS
    row_specs = T3_SPECS
    column_specs = {"Top-1 Error (%)": {"eval": "imagenet", "measure": "top1"},
                    "Top-5 Error (%)": {"eval": "imagenet", "measure": "top5"}}
    cited_rows = tuple(r for r in T3_ROWS if r not in T3_SPECS)
    # on a stand-in the CIFAR-10 and CIFAR-100 searches are the same search: run the CIFAR-10 rows
    cpu_rows = ("DARTS2nd-CIFAR10", "LFM-DARTS-2nd-CIFAR10", "PDARTS (CIFAR10)", "LFM-PDARTS-CIFAR10")
    smoke_rows = ("DARTS2nd-CIFAR10", "LFM-DARTS-2nd-CIFAR10")
    uses_imagenet = True
    paper = paper_table(T3_ROWS, T3_COLS, """
30.2 10.1
29.4 10.5
26.4 10.2
25.1 7.6
26.0 8.4
25.8 8.1
25.2 8.0
24.3 7.6
27.3 9.2
26.0 8.4
25.7 8.1
25.2 7.8
24.4 7.4
24.2 7.3
24.9 7.5
26.0 8.5
26.7 8.7
25.1 7.6
24.4 7.4
24.1 6.8
24.7 7.5
24.1 6.7
""")

    def row_dataset(self, row, column):
        return "cifar100" if "CIFAR100" in row else "cifar10"

    def finish_metrics(self, cell, metrics):
        metrics["test_err"] = metrics["top5_err"] if cell.params.get("measure") == "top5" else metrics["top1_err"]
        return metrics

    def describe(self, profile, options):
        if self.standin(profile, options) is None:
            e = settings(profile, options).evaluation
            return ("data: cells searched on CIFAR-10/100 from --data-root, evaluated on ImageNet from --imagenet-root "
                    f"({e.imagenet_layers} cells, C={e.imagenet_C}, {e.imagenet_epochs} epochs).")
        return (super().describe(profile, options) + " ImageNet stand-in: the searched cell in the ImageNet network "
                f"on {imagenet_standin(profile, options)} (top-5 error is near 0 with 10 classes).")


# ------------------------------------------------------------------------------------
# Table IV: single network vs two networks
# ------------------------------------------------------------------------------------
class Table4(NASExperiment):
    """Single network (W2 := W1) vs two networks, LFM-DARTS-2nd and LFM-PDARTS, CIFAR-100."""

    name = "table4"
    title = "Test error (%) of single network (SN) and two networks (TN) on CIFAR-100"
    rows = ["SN+DARTS", "TN+DARTS", "SN+PDARTS", "TN+PDARTS"]
    columns = ["CIFAR-100"]
    row_specs = {
        "SN+DARTS": spec("lfm-darts", "resnet18", variant="single"),
        "TN+DARTS": spec("lfm-darts", "resnet18", variant="two"),
        "SN+PDARTS": spec("lfm-pdarts", "resnet18", variant="single"),
        "TN+PDARTS": spec("lfm-pdarts", "resnet18", variant="two"),
    }
    column_specs = {"CIFAR-100": {"dataset": "cifar100"}}
    smoke_rows = ("SN+DARTS", "TN+DARTS")
    claims = (Claim("two networks >= one network", "Table IV",
                    (error_below("table4", "TN+DARTS", "SN+DARTS", ("CIFAR-100",)),
                     error_below("table4", "TN+PDARTS", "SN+PDARTS", ("CIFAR-100",)))),)
    paper = paper_table(rows, columns, """
19.28±0.31
17.65±0.45
17.37±0.23
16.44±0.11
""")


# ------------------------------------------------------------------------------------
# Table V: encoder size
# ------------------------------------------------------------------------------------
T5_ROWS = ["LFM-PDARTS-R18", "LFM-PDARTS-R101", "LFM-PDARTS-R152"]
T5_COLS = ["CIFAR-100", "ImageNet"]


class Table5(NASExperiment):
    """LFM-PDARTS with ResNet-18/101/152 encoders: searched on CIFAR-100, evaluated on CIFAR-100 and ImageNet."""

    name = "table5"
    title = "Test error (%) on CIFAR-100 and ImageNet with different sizes of image encoder"
    rows = T5_ROWS
    columns = T5_COLS
    row_specs = {r: spec("lfm-pdarts", "resnet" + r.rsplit("-R", 1)[1]) for r in T5_ROWS}
    column_specs = {"CIFAR-100": {"dataset": "cifar100", "eval": "cifar"},
                    "ImageNet": {"dataset": "cifar100", "eval": "imagenet"}}
    smoke_columns = ("CIFAR-100",)
    uses_imagenet = True
    paper = paper_table(T5_ROWS, T5_COLS, """
16.44 24.10
15.45 23.52
14.88 23.02
""")

    def describe(self, profile, options):
        if self.standin(profile, options) is None:
            return ("data: LFM-PDARTS searched on CIFAR-100 from --data-root, evaluated on CIFAR-100 and on ImageNet "
                    "from --imagenet-root.")
        return (super().describe(profile, options) + " ImageNet column: the searched cell in the ImageNet network "
                f"on {imagenet_standin(profile, options)} (a stand-in).")


# ------------------------------------------------------------------------------------
# Table X: memory and cost with and without parameter sharing
# ------------------------------------------------------------------------------------
T10_ROWS = ["LFM+DARTS, no PS", "LFM+DARTS+PS", "DARTS", "LFM+PDARTS, no PS", "LFM+PDARTS+PS", "PDARTS"]
T10_COLS = ["Error (%)", "Memory (MiB)", "Search cost (GPU-days)", "Search time (s/epoch)"]
MEASURE_KEY = {"error": "test_err", "memory": "peak_mem_mb", "cost": "search_gpu_days", "epoch": "search_epoch_s"}


class Table10(NASExperiment):
    """Test error, peak search memory and search cost with and without parameter sharing (CIFAR-100).

    Each row is one search (and one evaluation for the error column); the memory and time columns
    are measured from that search: CUDA ``max_memory_allocated``, or on CPU the growth of the
    process's peak resident set during the search; the cost is the search's device time in days
    (GPU-days on a GPU, CPU-days of this machine otherwise), the last column its mean seconds per
    epoch (the paper prints no such column). The table's ``value`` is the column's quantity.
    """

    name = "table10"
    title = "Test error (%), memory (MiB) and search cost (GPU-days) with and without parameter sharing, CIFAR-100"
    metric = "value"
    metric_label = "Error (%), peak search memory (MiB), search cost (device-days), search time (s/epoch)"
    rows = T10_ROWS
    columns = T10_COLS
    row_specs = {
        "LFM+DARTS, no PS": spec("lfm-darts", "resnet18", variant="two"),
        "LFM+DARTS+PS": spec("lfm-darts", variant="ps"),
        "DARTS": spec("darts2"),
        "LFM+PDARTS, no PS": spec("lfm-pdarts", "resnet18", variant="two"),
        "LFM+PDARTS+PS": spec("lfm-pdarts", variant="ps"),
        "PDARTS": spec("pdarts"),
    }
    column_specs = {
        "Error (%)": {"dataset": "cifar100", "measure": "error"},
        "Memory (MiB)": {"dataset": "cifar100", "measure": "memory"},
        "Search cost (GPU-days)": {"dataset": "cifar100", "measure": "cost"},
        "Search time (s/epoch)": {"dataset": "cifar100", "measure": "epoch"},
    }
    smoke_rows = ("LFM+DARTS, no PS", "LFM+DARTS+PS", "DARTS")
    claims = (Claim("parameter sharing (PS) cuts search memory", "Table X",
                    tuple(error_below("table10", ps, no_ps, ("Memory (MiB)",), "value", "peak search memory (MiB)")
                          for ps, no_ps in (("LFM+DARTS+PS", "LFM+DARTS, no PS"),
                                            ("LFM+PDARTS+PS", "LFM+PDARTS, no PS")))),)
    paper = paper_table(T10_ROWS, T10_COLS, """
17.65±0.45 23702 5.4 -
18.77±0.31 12138 1.6 -
20.58±0.44 11053 1.5 -
16.44±0.11 20744 2.0 -
16.83±0.08 10582 0.3 -
17.49 9659 0.3 -
""")

    def finish_metrics(self, cell, metrics):
        metrics["search_cpu_hours"] = metrics["search_s"] / 3600.0
        key = MEASURE_KEY[cell.params["measure"]]
        if key == "search_gpu_days" and str(metrics.get("device", "")).startswith("cpu"):
            key = "search_cpu_hours"  # a CPU search is not GPU time: hours of this machine's CPU
        metrics["value"] = float(metrics[key])
        metrics["value_unit"] = key
        return metrics

    def column_label(self, column, configs):
        if column == "Search cost (GPU-days)" and configs and all(
                (c.get("runtime") or {}).get("device_type") == "cpu" for c in configs):
            return "Search cost (CPU-hours; paper: GPU-days)"
        return column


# ------------------------------------------------------------------------------------
# Figures 4 and 5: ablations of a_i and of the similarity
# ------------------------------------------------------------------------------------
FIG_COLS = ["LFM-DARTS-2nd", "LFM-PDARTS"]


class _AblationFigure(NASExperiment):
    kind = "figure"
    columns = FIG_COLS
    column_specs = {c: {"dataset": "cifar100"} for c in FIG_COLS}
    smoke_columns = ("LFM-DARTS-2nd",)
    cpu_columns = ("LFM-DARTS-2nd",)
    paper = {}  # the figures' bar heights are not printed in the paper
    row_args: dict[str, dict[str, Any]] = {}

    def cells(self, profile, options):
        engine = options.get("engine") or "auto"
        cells = []
        for row in self.rows:
            for column in self.run_columns(profile):
                method = "lfm-darts" if column == "LFM-DARTS-2nd" else "lfm-pdarts"
                dataset = self.standin(profile, options) or "cifar100"
                params = {"dataset": dataset, **spec(method, "resnet18", **self.row_args[row]), "eval": "cifar",
                          "engine": self.resolve_engine(method, engine)}
                cells.append(Cell(row, column, params))
        return cells

    def plot(self, frame, out_path):
        from lfm_nas.figures import plot_bars

        plot_bars(frame, out_path, self.rows, self.columns, self.title, self.metric, self.metric_label)


class Figure4(_AblationFigure):
    """Ablation of the three terms of a_i (x: visual similarity, u: W1's mistakes, z: label agreement).

    Each ablated term is replaced by ones; LFM with a ResNet-18 encoder on CIFAR-100. The paper
    draws the bars without printing their values, so there are no paper numbers to compare.
    """

    name = "figure4"
    title = "Ablation on the components of a_i (CIFAR-100, ResNet-18 encoder)"
    rows = ["w/o x", "w/o u", "w/o z", "Full"]
    claims = (Claim("each ablation of a_i (w/o x, w/o u, w/o z) loses to the full LFM", "Fig. 4",
                    tuple(error_below("figure4", "Full", w, tuple(FIG_COLS)) for w in ("w/o x", "w/o u", "w/o z"))),)
    row_args = {"w/o x": {"drop": "x"}, "w/o u": {"drop": "u"}, "w/o z": {"drop": "z"}, "Full": {}}


class Figure5(_AblationFigure):
    """Visual similarity in a_i: dot-product attention vs cosine similarity vs negative L2 distance.

    The paper draws the bars without printing their values.
    """

    name = "figure5"
    title = "Visual similarity metrics in LFM (CIFAR-100, ResNet-18 encoder)"
    rows = ["Dot product", "Cosine similarity", "L2 distance"]
    claims = (Claim("dot-product similarity >= cosine and L2", "Fig. 5",
                    tuple(error_below("figure5", "Dot product", w, tuple(FIG_COLS))
                          for w in ("Cosine similarity", "L2 distance"))),)
    row_args = {"Dot product": {"similarity": "dot"}, "Cosine similarity": {"similarity": "cosine"},
                "L2 distance": {"similarity": "l2"}}
