"""Network cost per 40-slice study: seconds and peak RSS, per backbone and input size.

Each configuration runs in a fresh subprocess so peak RSS belongs to it alone. On CPU
it measures fp32; with ``--device cuda`` bf16 autocast (what the node uses on GPU).
The reference point is the same model at another size/backbone in the same run.
Usage::

    .venv/bin/python bench/network.py [--device cpu] [--slices 40] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    ("resnet18", 256),
    ("resnet50", 256),
    ("resnet50", 512),
    ("seresnext50_32x4d", 256),
    ("seresnext50_32x4d", 512),
]


def child(backbone: str, size: int, slices: int, repeat: int, device: str) -> dict[str, float]:
    sys.path.insert(0, str(REPO))
    import torch

    from models.network import CNNLSTM, NetworkConfig

    dev = torch.device(device)
    model = CNNLSTM(NetworkConfig(backbone=backbone)).eval().to(dev)
    x = torch.randn(slices, 3, size, size, device=dev)
    amp = dev.type == "cuda"

    def run() -> None:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            model.predict_series(x, chunk=32)
        if amp:
            torch.cuda.synchronize()

    run()  # warm-up (allocator, cuDNN autotune)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    out = {
        "seconds": min(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if amp:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("BACKBONE", "SIZE"))
    args = ap.parse_args()
    if args.child:
        res = child(args.child[0], int(args.child[1]), args.slices, args.repeat, args.device)
        print(json.dumps(res))
        return
    print(f"device {args.device}, {args.slices} slices per study, best of {args.repeat}")
    print(f"{'backbone':<20}{'size':>6}{'s/study':>10}{'slices/s':>10}{'peak RSS MB':>13}")
    for backbone, size in CONFIGS:
        cmd = [sys.executable, __file__, "--child", backbone, str(size)]
        cmd += ["--slices", str(args.slices), "--repeat", str(args.repeat)]
        cmd += ["--device", args.device]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        extra = f"  GPU {res['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in res else ""
        print(
            f"{backbone:<20}{size:>6}{res['seconds']:>10.2f}"
            f"{args.slices / res['seconds']:>10.1f}{res['peak_rss_mb']:>13.0f}{extra}"
        )


if __name__ == "__main__":
    main()
