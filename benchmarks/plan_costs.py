"""Write lfm_core's step-cost table (``lfm-bench run EXP --plan --plan-device NAME``) from the
committed step-cost benchmarks: ``benchmarks/results/<NAME>.json`` -> ``lfm_core/step_costs.json``.

    python benchmarks/plan_costs.py            # rewrite the table from cpu.json and cuda-h200.json

Only what ``step_cost.py`` measured goes in (the LFM-DR step per engine and the cross-entropy
step, ResNet-32); lfm_core.plan estimates the other baselines from the cross-entropy step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).parent
TABLE = HERE.parent / "packages" / "lfm-core" / "src" / "lfm_core" / "step_costs.json"
ENGINES = {"lfm_step_s": "", "fd_step_s": "/finite-difference", "fwd_step_s": "/forward-difference"}


def entry(name: str, result: dict) -> dict:
    dr = result["dr"]
    model = "resnet32"  # step_cost.py's DR setup: ResNet-32 (width 16), batch 100
    steps = {f"dr/{model}/ce": round(dr["ce_step_s"], 6)}
    for field, suffix in ENGINES.items():
        if dr.get(field) is not None:
            steps[f"dr/{model}/lfm{suffix}"] = round(dr[field], 6)
    source = (f"benchmarks/results/{name}.json ({result['device']}, torch {result['torch']}, "
              f"{result['threads']} threads; {dr['setup']})")
    return {"device": result["device"], "source": source, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["cpu", "cuda-h200"], help="result files (stems) to include")
    args = parser.parse_args()
    table = {name: entry(name, json.loads((HERE / "results" / f"{name}.json").read_text())) for name in args.names}
    TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(TABLE)


if __name__ == "__main__":
    main()
