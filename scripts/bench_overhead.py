"""Cost of the gates: a search training step of the gated supernet (gates + STE + budget
loss) against the same net without gates, interleaved in one process.

    python scripts/bench_overhead.py [--space repvgg-fmnist] [--batch 128] [--steps 60]

Prints the median step time of each and their ratio (the issue asks for at most 1.10).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from repas.search import Budget, spec_cost
from repas.spec import ArchSpec
from repas.supernet import build, create_supernet_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="repvgg-fmnist")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    gated_spec = create_supernet_spec(args.space)
    plain_spec = ArchSpec.from_dict({**gated_spec.to_dict(),
                                     "layers": [{**dataclasses.asdict(lay), "gated": False}
                                                for lay in gated_spec.layers]})
    torch.manual_seed(0)
    gated, plain = build(gated_spec), build(plain_spec)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("gates.")})
    budget = Budget(gated_spec, 0.5 * spec_cost(gated_spec))
    opts = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in
            (("gated", gated), ("plain", plain))}
    x = torch.randn(args.batch, gated_spec.in_channels, *gated_spec.input_size)
    y = torch.randint(0, gated_spec.num_classes, (args.batch,))

    def step(name: str) -> float:
        model, opt = (gated, opts["gated"]) if name == "gated" else (plain, opts["plain"])
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        if name == "gated":
            loss = loss + budget.loss(budget.cost(model.channel_counts()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    for _ in range(5):
        step("gated")
        step("plain")
    times: dict[str, list[float]] = {"gated": [], "plain": []}
    for i in range(args.steps):
        order = ("gated", "plain") if i % 2 == 0 else ("plain", "gated")
        for name in order:
            times[name].append(step(name))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, {args.space}, batch {args.batch}, {args.steps} interleaved steps each")
    print(f"without gates: {med['plain']:.2f} ms/step")
    print(f"gated search step: {med['gated']:.2f} ms/step")
    print(f"ratio gated / plain: {med['gated'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
