"""Mutation check: does the suite fail when the code breaks a promise of the README?

    python tests/mutations.py [--only NAME ...] [--list]

Each mutation below is a bug that once went unnoticed by the whole suite (issue 19's audit)
or the old behaviour a test was written against.  For each, the project is copied to a
temporary folder (beside a link to ``../shared``, so fixture tests run), the mutation is
applied to the copy, and the tests meant to catch it run there against the copy's package.
A baseline run of the same tests on the unmutated copy comes first and must pass.  One line
per mutation says whether it was caught (and by which test) or SURVIVED; the exit code is
1 if any survived or the baseline failed.  Run on demand, not in CI: it takes about 7
minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = (".git", ".venv", "__pycache__", "*.egg-info", ".ruff_cache", "runs", "build")

KILL = (
    "tests/test_train.py::test_sigkill_mid_checkpoint_write_keeps_the_previous_checkpoint",
    "tests/test_cli.py::test_sigkill_mid_image_write_keeps_the_previous_output",
)
TILES = (
    "tests/test_tiles.py::test_a_small_budget_tiles_and_tiles_are_seamless",
    "tests/test_tiles.py::test_fine_tiles_of_whole_coarse_maps_reproduce_the_untiled_upscale",
    "tests/test_tiles.py::test_sixteen_bits_tile_too",
    "tests/test_tiles.py::test_the_bundled_model_tiled_with_its_margins_gives_the_untiled_pixels",
    "tests/test_cli_pictures.py::test_tiled_output_matches_untiled",
)
REFERENCES = (
    "tests/test_cli_batch.py::test_references_by_folder_and_map_then_skip_existing_and_shards",
    "tests/test_matching.py::test_ref_map_from_match_ref_drives_upscale",
    "tests/test_auto_refs.py::test_cli_ref_auto",
)
GAN = ("tests/test_train.py::test_gan_preset_steps_move_the_critic_then_the_generator",)


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``path``."""

    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "atomic-plain-write",
        "atomic_path writes the target itself, no temporary file",
        "ttsr_cli/atomic.py",
        "    target.parent.mkdir(parents=True, exist_ok=True)\n",
        "    target.parent.mkdir(parents=True, exist_ok=True)\n    yield target\n    return\n",
        KILL,
    ),
    Mutation(
        "tile-margins-zero",
        "tiles read no margin beyond their cores",
        "ttsr_cli/tiles.py",
        "    bounds = [round(i * length / count) for i in range(count + 1)]\n",
        "    overlap = 0\n    bounds = [round(i * length / count) for i in range(count + 1)]\n",
        TILES,
    ),
    Mutation(
        "tile-margins-half",
        "tiles read half their margins",
        "ttsr_cli/tiles.py",
        "    bounds = [round(i * length / count) for i in range(count + 1)]\n",
        "    overlap //= 2\n    bounds = [round(i * length / count) for i in range(count + 1)]\n",
        TILES,
    ),
    Mutation(
        "budget-ignored",
        "tiles are planned for four times --max-memory",
        "ttsr_cli/run/ttsr.py",
        "plan_passes((lr_height, lr_width), budget, widths",
        "plan_passes((lr_height, lr_width), 4 * budget, widths",
        ("tests/test_memory.py",),
    ),
    Mutation(
        "budget-old-calibration",
        "tiles costed as before the floors and the canvas (the paper configuration's terms)",
        "ttsr_cli/tiles.py",
        "CANVAS_CHANNELS = 7\n",
        "CANVAS_CHANNELS = FINE_FLOOR = COARSE_FLOOR = 0\n",
        ("tests/test_memory.py",),
    ),
    Mutation(
        "parity-truncates",
        "8-bit output truncated instead of rounded",
        "ttsr_cli/pixels.py",
        "    t = t.round().clamp(0, top)\n",
        "    t = t.floor().clamp(0, top)\n",
        ("tests/test_parity.py::test_cli_reproduces_the_original_uint8_output",),
    ),
    Mutation(
        "exit-unknown-device",
        "an unknown --device escapes as a plain exception (exit 1, traceback)",
        "ttsr_cli/devices.py",
        '        raise TTSRError(f"unknown device',
        '        raise ValueError(f"unknown device',
        ("tests/test_cli.py::test_bad_options",),
    ),
    Mutation(
        "exit-debug",
        "--debug re-raises configuration errors (exit 1)",
        "ttsr_cli/console.py",
        "        if debug:\n            traceback.print_exc()\n        error(str(exc))\n",
        "        if debug:\n            raise\n        error(str(exc))\n",
        ("tests/test_cli.py::test_debug_shows_the_traceback",),
    ),
    Mutation(
        "exit-vgg-download",
        "a failed VGG19 download escapes as a plain exception (exit 1, traceback)",
        "ttsr_cli/vgg_weights.py",
        '        raise TTSRError(f"could not download VGG19 weights',
        '        raise RuntimeError(f"could not download VGG19 weights',
        ("tests/test_vgg_weights.py::test_missing_file_fails_with_one_line",),
    ),
    Mutation(
        "ref-map-ignored",
        "--ref-map is read but not used",
        "ttsr_cli/batch.py",
        "    rows = {**(options.ranked or {}), **(read_ref_map(options.ref_map) if options.ref_map"
        " else {})}",
        "    rows = {**(options.ranked or {})}",
        REFERENCES,
    ),
    Mutation(
        "ref-dir-first-file",
        "--ref-dir gives every input the folder's first reference",
        "ttsr_cli/batch.py",
        "            matches = by_stem.get(source.stem, [])\n",
        "            matches = next(iter(by_stem.values()), [])\n",
        REFERENCES,
    ),
    Mutation(
        "ref-auto-ignored",
        "--ref auto ranks the pool but the ranking is not used",
        "ttsr_cli/batch.py",
        "    rows = {**(options.ranked or {}), **(",
        "    rows = {**(",
        REFERENCES,
    ),
    Mutation(
        "train-default-paper",
        "ttsr train defaults to the paper configuration (VGG19 from the Hub)",
        "ttsr_cli/cli.py",
        '    ] = "lite",\n',
        '    ] = "paper",\n',
        ("tests/test_train.py::test_defaults_train_offline_on_a_fresh_machine",),
    ),
    Mutation(
        "evaluate-baseline-default",
        "ttsr evaluate without a model measures bicubic alone",
        "ttsr_cli/cli.py",
        "        baseline_only = model == BASELINE and weights is None\n",
        "        baseline_only = model in (BASELINE, None) and weights is None\n",
        ("tests/test_evaluate.py::test_without_a_model_the_bundled_default_runs_beside_bicubic",),
    ),
    Mutation(
        "bf16-ignored",
        "--precision bf16 runs in fp32",
        "ttsr_cli/run/common.py",
        "        return torch.autocast(device.type, dtype=precision)\n",
        "        return contextlib.nullcontext()\n",
        ("tests/test_pipeline.py::test_bf16_stays_close_to_fp32_and_really_runs_in_bf16",),
    ),
    Mutation(
        "gan-critic-frozen",
        "the critic's optimiser never steps",
        "ttsr_cli/train/ttsr.py",
        "            self.critic_optimizer.step()\n",
        "            pass\n",
        GAN,
    ),
    Mutation(
        "gan-adversarial-detached",
        "the generator's adversarial term does not reach the generator",
        "ttsr_cli/train/ttsr.py",
        'terms["adv"] = generator_adversarial_loss(self.critic, out.sr.float())',
        'terms["adv"] = generator_adversarial_loss(self.critic, out.sr.float().detach())',
        GAN,
    ),
)


def copy_project(scratch: Path) -> Path:
    """The project (sources, tests, bundled models) in ``scratch/main``, with
    ``scratch/shared`` linked to the real ``../shared`` when there is one."""
    copy = scratch / "main"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*IGNORED))
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (scratch / "shared").symlink_to(shared)
    return copy


def environment(copy: Path) -> dict[str, str]:
    """The copy's package first on the path, for pytest and the CLI processes it starts."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    probe = [sys.executable, "-c", "import ttsr_cli; print(ttsr_cli.__file__)"]
    found = subprocess.run(probe, cwd=copy, capture_output=True, text=True, env=env, check=True)
    if not Path(found.stdout.strip()).is_relative_to(copy):
        raise SystemExit(f"the copy's package is not the one imported: {found.stdout.strip()}")
    return env


def run_tests(copy: Path, env: dict[str, str], tests: tuple[str, ...]) -> tuple[str, str]:
    """pytest on ``tests`` in the copy: (outcome, detail), outcome ``passed``, ``failed``
    (detail: how many of the tests failed, and which) or ``skipped`` (nothing ran, e.g. no
    ``../shared``)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    summary = lines[-1] if lines else result.stderr.strip()[-200:]
    if result.returncode == 0:
        return ("skipped" if " passed" not in summary else "passed"), summary
    failed = re.findall(r"^FAILED (\S+)", result.stdout, re.MULTILINE)
    names = ", ".join(name.split("::")[-1] for name in failed)
    return "failed", f"{summary}: {names}" if failed else summary


def apply(copy: Path, mutation: Mutation) -> str:
    """Apply ``mutation`` to the copy; returns the original text to restore."""
    path = copy / mutation.path
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the text to mutate is not in {mutation.path} once")
    path.write_text(text.replace(mutation.old, mutation.new))
    return text


def check(copy: Path, env: dict[str, str], mutations: list[Mutation]) -> bool:
    """Baseline, then every mutation; prints a line each; True if all were caught."""
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    start = time.perf_counter()
    outcome, detail = run_tests(copy, env, tests)
    print(f"baseline ({len(tests)} test targets): {outcome}: {detail}", flush=True)
    if outcome != "passed":
        return False
    caught = True
    for mutation in mutations:
        original = apply(copy, mutation)
        try:
            outcome, detail = run_tests(copy, env, mutation.tests)
        finally:
            (copy / mutation.path).write_text(original)
        verdict = {"failed": "caught", "passed": "SURVIVED", "skipped": "NOT RUN"}[outcome]
        caught &= outcome == "failed"
        print(f"{mutation.name:26} {verdict:8} {mutation.what}: {detail}", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    return caught


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list or not chosen:
        for mutation in MUTATIONS:
            print(f"{mutation.name:26} {mutation.what}")
        return
    with tempfile.TemporaryDirectory(prefix="ttsr-mutations-") as scratch:
        copy = copy_project(Path(scratch))
        sys.exit(0 if check(copy, environment(copy), chosen) else 1)


if __name__ == "__main__":
    main()
