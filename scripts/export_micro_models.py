"""Export the micro-models of a latency table, to time them on another device (a phone).

    python scripts/export_micro_models.py --config configs/fmnist.yaml --out micro/ [--pte]
    # copy micro/ to the device, with scripts/time_micro_models.py; there:
    python time_micro_models.py micro/ --backend onnxruntime    # or executorch, with --pte files
    # back here:
    repas profile --config configs/fmnist.yaml --from-device micro/   # -> RUN_DIR/latency.csv

The models are the ones ``repas profile`` times here: one per table row, an empty one,
and three whole nets that calibrate the constant overhead.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from repas.config import load_config
from repas.deploy.profile import plan_profile, write_plan
from repas.errors import RepasError
from repas.stages import get_data
from repas.task_data import shaped_spec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML config: its space, data shape and profile.divisor")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", required=True, help="folder to write the models into")
    p.add_argument("--pte", action="store_true", help="also ExecuTorch .pte programs (XNNPACK)")
    args = p.parse_args()
    try:
        cfg = load_config(args.config, args.set)
        spec = shaped_spec(cfg, get_data(cfg))
        plan = plan_profile(spec, cfg.profile.divisor)
        written = write_plan(plan, args.out, pte=args.pte)
    except RepasError as e:
        print(f"export_micro_models: error: {e}", file=sys.stderr)
        return 2
    shutil.copy(Path(__file__).with_name("time_micro_models.py"), Path(args.out) / "time_micro_models.py")
    print(f"wrote {len(written)} models for {spec.name} ({len(plan.rows)} rows) and plan.json to {args.out}; "
          f"time them on the device with: python time_micro_models.py {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
