"""Is a strided 1x1 convolution's weight gradient right in channels_last on this CPU?

oneDNN's NHWC 1x1 backward-weights kernel mishandles inputs with fewer channels than its
block (oneDNN issue #6035); on an AVX2 CPU it crashes, hangs or returns a wrong gradient.
Each shape runs in its own process (a crash or a hang must not end the check): the weight
gradient of ``Conv2d(c, 16, 1, stride=2)`` after 5 steps in channels_last, against NCHW.
``repas.train.memory_format`` keeps training out of channels_last where this fails.

    python scripts/check_nhwc_conv.py --channels 1,2,3,4,5,6,7,8,9,12,16 --threads 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

CHILD = """
import sys, torch
torch.set_num_threads({threads}); torch.manual_seed(0)
conv = torch.nn.Conv2d({c}, 16, 1, stride={stride})
x = torch.randn(64, {c}, 28, 28)
ref = torch.autograd.grad(conv(x).square().sum(), conv.weight)[0]
conv = conv.to(memory_format=torch.channels_last)
for _ in range(5):
    got = torch.autograd.grad(conv(x.contiguous(memory_format=torch.channels_last)).square().sum(), conv.weight)[0]
print(((got - ref).abs().max() / ref.abs().max()).item())
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", default="1,2,3,4,5,6,7,8,9,12,16")
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"Conv2d(c, 16, 1, stride={args.stride}), {args.threads} threads\n")
    print("| input channels | NHWC weight gradient against NCHW |\n|---|---|")
    for c in (int(s) for s in args.channels.split(",")):
        code = CHILD.format(c=c, stride=args.stride, threads=args.threads)
        try:
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=args.timeout)
            if run.returncode != 0:
                verdict = f"crashed ({(run.stderr.strip().splitlines() or ['exit ' + str(run.returncode)])[-1]})"
            else:
                error = float(run.stdout.strip())
                verdict = "right" if error < 1e-4 else f"**wrong**: max error {error:.0%} of the largest entry"
        except subprocess.TimeoutExpired:
            verdict = f"hung (killed after {args.timeout:g} s)"
        print(f"| {c} | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
