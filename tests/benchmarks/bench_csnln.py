"""CSNLN speed and memory: exact attention in bounded memory and windowed attention, each
against a dense implementation of the official algorithm (``tests/csnln_dense.py``: full
(positions x positions) softmax matrices, the cross-scale values unfolded and deconvolved)
in the same run.

    python tests/benchmarks/bench_csnln.py [--cases x4-48 x4-64 x4-128 x2-128]
        [--impls exact windowed dense] [--device cpu|cuda] [--json FILE]

Each (case, implementation) runs in a fresh process, so its peak memory is its own: peak
RSS (VmHWM) on the CPU, ``max_memory_allocated`` on CUDA.  The network is the official
configuration (n_feats 128, 12 SEM iterations) with the CSNLN fixture's weight rule when
``../shared`` is there (the official code's output is then known), else seeded random
weights; the input is a crop of scikit-image's ``astronaut``, bicubic-reduced to the LR
size.  TFLOP are counted by ``FlopCounterMode`` on meta tensors (matrix products and
convolutions).  Outputs are compared, as 8-bit images, with the dense run of the same case.
The official code's own figures (issue 14, measured on this machine: 2 threads, whole
process) are printed beside ours.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "csnln-official"
CASES = {"x4-48": (4, 48), "x4-64": (4, 64), "x4-128": (4, 128), "x2-128": (2, 128)}
#: The official code without --chop: seconds and GB, as issue 14 measured them here.
OFFICIAL = {"x4-48": (18.75, 1.35), "x4-64": (70.9, 2.78), "x2-128": (69.5, 2.79)}
#: Dense attention beyond this many bytes of score matrices is not run (it would swap).
DENSE_LIMIT = 6 << 30


def network(scale: int):
    """The official configuration, with the fixture's weights when available."""
    import torch

    from ttsr_cli import archs

    if (FIXTURE / "make_weights.py").is_file():
        spec = importlib.util.spec_from_file_location("make_weights", FIXTURE / "make_weights.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        state = module.make_state_dict(str(FIXTURE / f"keys_x{scale}.json"))
        return archs.load(state), "fixture weights"
    torch.manual_seed(0)
    return archs.family("csnln").create({"scale": scale, "n_feats": 128, "depth": 12}), "random"


def lr_image(side: int) -> np.ndarray:
    import skimage.data
    from PIL import Image

    crop = skimage.data.astronaut()[:384, 64:448]
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.BICUBIC))


def dense_bytes(scale: int, side: int) -> int:
    """The largest score matrix the dense IS-NL holds, times the copies softmax makes."""
    positions = (side * (2 if scale == 4 else 1)) ** 2
    return 3 * 4 * positions * positions


def child(case: str, impl: str, device_name: str, out: str) -> dict:
    """One run of one implementation: time, peak memory, TFLOP; the output saved to ``out``."""
    import torch

    from ttsr_cli.pixels import to_image, to_tensor
    from ttsr_cli.run.csnln import CSNLNRunner

    sys.path.insert(0, str(ROOT / "tests"))
    from csnln_dense import dense_forward

    torch.set_num_threads(2)
    scale, side = CASES[case]
    device = torch.device(device_name)
    (model, descriptor), weights = network(scale)
    lr = lr_image(side)
    runner = CSNLNRunner(model, descriptor, device, attention=impl if impl != "dense" else "exact")
    x = to_tensor(lr, device, signed=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.inference_mode():
        sr = (
            to_image(dense_forward(model, x), signed=False)
            if impl == "dense"
            else runner.upscale(lr)
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    np.save(out, sr)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _vm_hwm()
    tiles = 1 if impl != "windowed" else len(runner.windows(side, side, 1 << 40))
    return {
        "seconds": seconds,
        "peak_gib": peak / (1 << 30),
        "tflop": _tflop(model, descriptor, impl, side, runner),
        "tiles": tiles,
        "weights": weights,
    }


def _vm_hwm() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _tflop(model, descriptor, impl: str, side: int, runner) -> float:
    """FLOPs on meta tensors: the whole image, or every window at its padded size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "tests"))
    from csnln_dense import dense_forward

    meta = model.to("meta")
    sizes = [(side, side)]
    if impl == "windowed":
        multiple = descriptor.size_multiple
        sizes = [
            tuple(-(-(s.stop - s.start) // multiple) * multiple for s in window.read)
            for window in runner.windows(side, side, 1 << 40)
        ]
    total = 0
    with torch.inference_mode():
        for height, width in sizes:
            x = torch.zeros(1, 3, height, width, device="meta")
            with FlopCounterMode(display=False) as counter:
                dense_forward(meta, x) if impl == "dense" else meta(x, chunk_bytes=64 << 20)
            total += counter.get_total_flops()
    return total / 1e12


def compare(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """Largest 8-bit difference and PSNR (dB) between two outputs."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff**2))
    return int(np.abs(diff).max()), (float("inf") if mse == 0 else 10 * np.log10(255**2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--impls", nargs="+", default=["exact", "windowed", "dense"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("CASE", "IMPL", "OUT"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child[:2], args.device, args.child[2])))
        return
    rows = run_all(args.cases, args.impls, args.device)
    print_table(rows, args.device)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def run_all(cases: list[str], impls: list[str], device: str) -> list[dict]:
    import subprocess

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            outputs = {}
            for impl in sorted(impls, key=lambda i: i != "dense"):
                scale, side = CASES[case]
                if impl == "dense" and device == "cpu" and dense_bytes(scale, side) > DENSE_LIMIT:
                    rows.append({"case": case, "impl": impl, "skipped": "needs > 6 GiB"})
                    continue
                out = str(Path(tmp) / f"{case}-{impl}.npy")
                command = [sys.executable, __file__, "--device", device]
                command += ["--child", case, impl, out]
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                row = {"case": case, "impl": impl, **json.loads(result.stdout.splitlines()[-1])}
                outputs[impl] = np.load(out)
                if "dense" in outputs and impl != "dense":
                    row["max_diff"], row["psnr_vs_dense"] = compare(outputs[impl], outputs["dense"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[dict], device: str) -> None:
    memory = "peak RSS" if device == "cpu" else "peak allocated"
    print(
        f"| case | attention | tiles | s | {memory} GiB | TFLOP | vs dense: time, memory, "
        "max 8-bit diff, PSNR | vs official (no chop): time, memory |"
    )
    print("|---|---|---:|---:|---:|---:|---|---|")
    dense = {r["case"]: r for r in rows if r["impl"] == "dense" and "seconds" in r}
    for row in rows:
        if "skipped" in row:
            print(f"| {row['case']} | {row['impl']} | | | | | not run: {row['skipped']} | |")
            continue
        base = dense.get(row["case"])
        versus = (
            ""
            if base is None or row["impl"] == "dense"
            else (
                f"{row['seconds'] / base['seconds']:.2f}x, "
                f"{row['peak_gib'] / base['peak_gib']:.2f}x, "
                f"{row['max_diff']}, {row['psnr_vs_dense']:.1f} dB"
            )
        )
        official = OFFICIAL.get(row["case"])
        ratio = (
            ""
            if official is None or device != "cpu"
            else (
                f"{row['seconds'] / official[0]:.2f}x, "
                f"{row['peak_gib'] * (1 << 30) / 1e9 / official[1]:.2f}x"
            )
        )
        print(
            f"| {row['case']} | {row['impl']} | {row['tiles']} | {row['seconds']:.2f} | "
            f"{row['peak_gib']:.2f} | {row['tflop']:.2f} | {versus} | {ratio} |"
        )


if __name__ == "__main__":
    main()
