"""Seconds per image and peak memory of `lldiff enhance`'s model path, like DiffLL's speed table.

    python benchmarks/speed.py                       # shipped default model, CPU (or GPU when present)
    python benchmarks/speed.py --model runs/x/best.pt --sizes 600x400 --repeats 5
    python benchmarks/speed.py --no-flush-denormal   # what denormal flushing buys
    python benchmarks/speed.py --precision float32   # what bfloat16 buys (auto: bfloat16 where the CPU has it)

Each (model, size) runs in a fresh subprocess, so peak memory (max RSS on the CPU,
max allocated on CUDA) belongs to that measurement alone. Rows: the default model at its
default steps, and the same architecture with ``levels: 0`` (pixel-space conditional
diffusion, random weights: only its time is meaningful). Model loading is excluded; the
first (warm-up) run is excluded; the figure is the median of the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from lldiff_cli.errors import run_script


def measure(args: argparse.Namespace) -> dict:
    import torch

    from lldiff_cli.device import pick_device, pick_precision
    from lldiff_cli.enhance import EnhanceSettings, enhance_image, in_precision
    from lldiff_cli.evaluate import max_rss_bytes
    from lldiff_cli.model import WaveletDiffusion, load_model

    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    if args.no_flush_denormal:
        torch.set_flush_denormal(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, map_location=device)
    if args.levels is not None:
        from dataclasses import replace

        model = WaveletDiffusion(replace(model.config, levels=args.levels)).eval()
    model = in_precision(model.to(device), precision)
    w, h = (int(v) for v in args.size.split("x"))
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, h, w, generator=gen) * 0.25
    settings = EnhanceSettings(steps=args.steps, ensemble=args.ensemble, precision=precision)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        enhance_image(model, image, settings, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else max_rss_bytes()
    return {"device": str(device), "size": args.size, "levels": model.config.levels,
            "steps": args.steps or model.config.steps, "ensemble": args.ensemble or model.config.ensemble,
            "precision": precision, "seconds": statistics.median(times[1:]),
            "peak_mb": peak / 2 ** 20, "threads": torch.get_num_threads(),
            "flush_denormal": not args.no_flush_denormal}


def main() -> None:
    from lldiff_cli.device import PRECISIONS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="card or checkpoint (default: the shipped model)")
    parser.add_argument("--sizes", default="600x400,1920x1080,4000x3000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--ensemble", type=int, default=None, help="mirrored copies averaged (default: the model's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="as lldiff enhance's (float16: CUDA only)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-flush-denormal", action="store_true")
    parser.add_argument("--skip-levels0", action="store_true", help="only the model as shipped")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--levels", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        print(json.dumps(measure(args)))
        return
    rows = []
    variants = [None] if args.skip_levels0 else [None, 0]
    for levels in variants:
        for size in args.sizes.split(","):
            cmd = [sys.executable, __file__, "--_one", "--size", size, "--repeats", str(args.repeats),
                   "--device", args.device, "--precision", args.precision, "--threads", str(args.threads)]
            for flag, value in (("--model", args.model), ("--steps", args.steps), ("--ensemble", args.ensemble),
                                ("--levels", levels)):
                if value is not None:
                    cmd += [flag, str(value)]
            if args.no_flush_denormal:
                cmd.append("--no-flush-denormal")
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{size} levels={levels}: failed\n{done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['device']:>5}  levels={row['levels']}  steps={row['steps']}  ensemble={row['ensemble']}  {row['precision']:>8}  {row['size']:>10}  "
                  f"{row['seconds']:7.3f} s/image  peak {row['peak_mb']:8.0f} MB  "
                  f"(threads {row['threads']}, flush_denormal {row['flush_denormal']})", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    run_script(main)
