"""SFT-GAN: the whole pipeline's time and peak memory, and what tiling the segmentation costs.

    python tests/benchmarks/bench_sftgan.py speed [--sides 64 128 250] [--threads 2]
    python tests/benchmarks/bench_sftgan.py seams [--side 250] [--margins 32 64 128]

``speed``: ``ttsr upscale LR.png -w GENERATOR --seg-weights SEGMENTATION`` in a fresh process
per size, as a user runs it (loading both networks included), wall time and peak RSS, for
a scikit-image photo at 4x the LR side and its MATLAB-bicubic x1/4 (rounded to 8 bits) as
the LR.  With ``--official DIR`` (the authors' ``pytorch_test`` folder, from a clone of
xinntao/SFTGAN), their ``test_segmentation.py`` and ``test_sftgan.py`` run on the same photo
just before, each in its own process as they are meant to be run, with the edits their own
comments ask for (the CPU for CUDA; the Torch-layout generator) and the same weights;
without it, the issue's official figures are printed beside.  ``seams``: the segmentation
of one LR photo whole and in tiles of 64 LR pixels (256 output pixels) with each margin: how far the
probabilities move, how many arg-max classes flip, and how many 8-bit output levels the
generator's image moves.  Both use the ``../shared`` fixture: its generator (Torch layout)
and its seeded random segmentation weights, which cost what the published ones cost but see
differently, so the seam figures describe this network shape, not the published weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "sftgan-official"
GENERATOR = FIXTURE / "generator_sftgan_torch.pth"
#: The official pipeline's (segmentation, generator) seconds and GB, from the issue.
OFFICIAL = {
    64: ((2.0, 0.64), (1.4, 0.32)),
    128: ((3.2, 0.64), (1.9, 0.49)),
    250: ((9.7, 1.1), (3.4, 1.1)),
}
PEAK = (
    "import resource, runpy, sys; sys.argv = ['ttsr', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('ttsr_cli', run_name='__main__')\n"
    "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
)


def segmentation_weights(folder: Path) -> Path:
    """The fixture's seeded segmentation weights, written by its own script (about 209 MB)."""
    out = folder / "seg.pth"
    script = FIXTURE / "make_seg_weights.py"
    subprocess.run(
        [sys.executable, str(script), str(FIXTURE / "seg_keys.json"), str(out)],
        check=True,
        capture_output=True,
    )
    return out


#: The authors' files a run needs, and the edits their comments ask for to run on a CPU with
#: the Torch-layout generator (their scripts' other choice of model).
OFFICIAL_FILES = ("architectures.py", "block.py", "util.py")
OFFICIAL_EDITS = {
    "test_segmentation.py": [("torch.device('cuda')", "torch.device('cpu')")],
    "test_sftgan.py": [
        ("torch.device('cuda')", "torch.device('cpu')"),
        ("model_path = '../pretrained_models/SFTGAN_noBN_OST_bg.pth'", "pass"),
        (
            "# model_path = '../pretrained_models/SFTGAN_torch.pth'",
            "model_path = '../pretrained_models/SFTGAN_torch.pth'",
        ),
    ],
}
#: Where torchvision is not installed: the two functions the authors' scripts import, writing
#: the same pixels (their colour segmentation PNG; ``make_grid`` is only used on 4-D input).
TORCHVISION_SHIM = (
    "import numpy as np\nfrom PIL import Image\n\n"
    "def make_grid(tensor, **kwargs):\n    raise NotImplementedError\n\n"
    "def save_image(tensor, path, **kwargs):\n"
    "    array = tensor.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).byte().numpy()\n"
    "    Image.fromarray(np.ascontiguousarray(array)).save(path)\n"
)
#: Runs a script as ``python SCRIPT`` would, then prints its peak RSS (kB) on stderr.
RUN_SCRIPT = (
    "import resource, runpy, sys; sys.path.insert(0, '.')\n"
    "try:\n    runpy.run_path(sys.argv[1], run_name='__main__')\n"
    "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
)


def photo(side: int) -> np.ndarray:
    import skimage.data

    image = skimage.data.astronaut()
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))


def official_tree(source: Path, folder: Path, seg: Path) -> Path:
    """The authors' layout (``pytorch_test/``, ``pretrained_models/``, ``data/``) in a
    scratch folder, their scripts edited only as :data:`OFFICIAL_EDITS` says."""
    tree = folder / "official"
    code = tree / "pytorch_test"
    code.mkdir(parents=True)
    for name in (*OFFICIAL_FILES, *OFFICIAL_EDITS):
        text = (source / name).read_text()
        for old, new in OFFICIAL_EDITS.get(name, []):
            if old not in text and new in text:  # a version that already says it
                continue
            if old not in text:
                raise SystemExit(f"{source / name}: no line {old!r}; not the expected version")
            text = text.replace(old, new, 1)
        (code / name).write_text(text)
    models = tree / "pretrained_models"
    models.mkdir()
    (models / "SFTGAN_torch.pth").symlink_to(GENERATOR)
    (models / "segmentation_OST_bic.pth").symlink_to(seg)
    if importlib.util.find_spec("torchvision") is None:
        shim = tree / "shim" / "torchvision"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text("")
        (shim / "utils.py").write_text(TORCHVISION_SHIM)
    return tree


def timed(command: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of a command whose stderr ends with its peak in kB."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 2**20


def run_official(tree: Path, hr: np.ndarray, env: dict[str, str]) -> list[tuple[float, float]]:
    """Their two scripts on ``hr``, each in its own process: (seconds, GB) of each."""
    data = tree / "data"
    for sub in ("samples", "samples_segprob", "samples_byteimg", "samples_colorimg"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for old in (data / "samples").iterdir():
        old.unlink()
    Image.fromarray(hr).save(data / "samples" / "photo.png")
    if (tree / "shim").is_dir():
        env = {**env, "PYTHONPATH": str(tree / "shim")}
    stages = ("test_segmentation.py", "test_sftgan.py")
    code = tree / "pytorch_test"
    return [timed([sys.executable, "-c", RUN_SCRIPT, s], env, cwd=code) for s in stages]


def speed(args: argparse.Namespace, folder: Path) -> None:
    from ttsr_cli.imresize import imresize

    seg = segmentation_weights(folder)
    tree = official_tree(args.official, folder, seg) if args.official else None
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    source = "measured just before" if tree else "the issue's figures"
    print(f"official: {source}")
    print(
        "| LR -> SR | ttsr (s) | peak RSS (GB) | official seg + gen (s) | peak RSS (GB) | ratio "
        "| values within 1 level |"
    )
    print("|---|---|---|---|---|---|---|")
    for side in args.sides:
        hr = photo(4 * side)
        lr = np.round(np.clip(imresize(hr / 255.0, 0.25), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(lr).save(folder / f"lr{side}.png")
        stages = run_official(tree, hr, env) if tree else OFFICIAL.get(side)
        command = [sys.executable, "-c", PEAK, "upscale", str(folder / f"lr{side}.png")]
        command += ["-w", str(GENERATOR), "--seg-weights", str(seg)]
        command += ["-o", str(folder / f"sr{side}.png"), "--device", "cpu", "-q"]
        seconds, peak_gb = timed(command, env)
        if stages is None:
            stages = ((float("nan"), float("nan")),) * 2
        official = sum(stage[0] for stage in stages)
        cells = (f"{side} -> {4 * side}", f"{seconds:.1f}", f"{peak_gb:.2f}")
        cells += (f"{stages[0][0]:.1f} + {stages[1][0]:.1f}", f"{max(s[1] for s in stages):.2f}")
        cells += (f"{seconds / official:.2f}", agreement(tree, folder / f"sr{side}.png"))
        print("| " + " | ".join(cells) + " |")


def agreement(tree: Path | None, ours: Path) -> str:
    """Share of 8-bit values within one level of the authors' output (their LR is not
    rounded to 8 bits, ours is): that both timed the same work."""
    if tree is None:
        return "-"
    theirs = np.asarray(Image.open(tree / "data" / "samples_result" / "photo_rlt.png"))
    diff = np.abs(theirs.astype(np.int16) - np.asarray(Image.open(ours)))
    return f"{(diff <= 1).mean():.1%}"


def seams(args: argparse.Namespace, folder: Path) -> None:
    from ttsr_cli.archs.sftgan.load import load_segmentation
    from ttsr_cli.pixels import to_image
    from ttsr_cli.run.common import Progress
    from ttsr_cli.run.sftgan import SFTGANRunner
    from ttsr_cli.weights import load, read_checkpoint

    torch.set_num_threads(args.threads)
    model, descriptor = load(GENERATOR)
    segmentation = load_segmentation(read_checkpoint(segmentation_weights(folder))[0])
    rgb = photo(args.side).astype(np.float64) / 255
    cpu = torch.device("cpu")
    whole_runner = SFTGANRunner(model, descriptor, segmentation, cpu)
    side = 4 * args.side
    with torch.inference_mode():
        exact = whole_runner.priors(
            rgb, whole_runner.segmentation_tiles(side, side), Progress(cpu, None, 1)
        )
        gen_tiles = whole_runner.generator_tiles(args.side, args.side)
        reference = to_image(
            whole_runner.generate(rgb, exact, gen_tiles, Progress(cpu, None, 9)), 8, signed=False
        )
        print(
            "| margin (output px) | tiles | max prob. change | mean | arg-max flips "
            "| output levels: max | mean | changed |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for margin in args.margins:
            runner = SFTGANRunner(model, descriptor, segmentation, cpu, tile=64, seg_margin=margin)
            tiles = runner.segmentation_tiles(side, side)
            tiled = runner.priors(rgb, tiles, Progress(cpu, None, len(tiles)))
            out = to_image(
                runner.generate(rgb, tiled, gen_tiles, Progress(cpu, None, 9)), 8, signed=False
            )
            change = (exact - tiled).abs()
            flips = float((exact.argmax(1) != tiled.argmax(1)).float().mean())
            levels = np.abs(out.astype(np.int16) - reference)
            cells = (
                margin,
                len(tiles),
                f"{float(change.max()):.2e}",
                f"{float(change.mean()):.2e}",
            )
            cells += (f"{flips:.3%}", levels.max(), f"{levels.mean():.3f}")
            print("| " + " | ".join(map(str, cells)) + f" | {(levels > 0).mean():.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    fast = verbs.add_parser("speed")
    fast.add_argument("--sides", type=int, nargs="+", default=[64, 128, 250])
    fast.add_argument("--threads", type=int, default=2)
    fast.add_argument("--official", type=Path, help="the authors' pytorch_test folder")
    cut = verbs.add_parser("seams")
    cut.add_argument("--side", type=int, default=250)
    cut.add_argument("--margins", type=int, nargs="+", default=[32, 64, 128])
    cut.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        (speed if args.verb == "speed" else seams)(args, Path(folder))


if __name__ == "__main__":
    main()
