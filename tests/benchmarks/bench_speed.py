"""Where the time of an x4 upscale goes (issue #6): per stage, per search, per image size.

For the paper configuration and for the bundled model (or, until one ships, the ``lite``
configuration), both with random weights where untrained (speed does not depend on them):

* each case runs in a fresh process per search, so its peak RSS is its own;
* the model's parts are called one by one, as ``TTSRRunner`` and ``TTSR.upscale`` call them
  (tiles included), so LTE, relevance search, texture transfer and the main network are
  timed apart; the same images then go through ``TTSRRunner`` end to end, to compare sums;
* each stage's GFLOP (matrix products and convolutions, counted by ``FlopCounterMode`` on
  shape-only meta tensors, or on the real ones for the fast search, which reads index
  values) gives its achieved GFLOP/s and share of the measured fp32 matmul peak;
* optionally, PSNR of exact vs fast search against ground truth (needs trained weights).

    python tests/benchmarks/bench_speed.py                     # everything: an hour or more
    python tests/benchmarks/bench_speed.py --cases cufed5 1000x664 --skip-quality
    python tests/benchmarks/bench_speed.py --weights model.safetensors --json speed.json
    python tests/benchmarks/bench_speed.py --cases 1mp 12mp --precision bf16 --max-memory 4.8GB
    python tests/benchmarks/bench_speed.py --quick             # tiny sizes: checks it runs

Prints Markdown tables on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from harness import (
    StageMeter,
    bundled_model,
    bundled_weights,
    matmul_peak_gflops,
    paper_model,
    peak_rss_mib,
    random_images,
    run_child,
    to_meta,
)

if TYPE_CHECKING:
    import torch

    from ttsr_cli.archs.ttsr import TTSR
    from ttsr_cli.archs.ttsr.attention import Correspondence
    from ttsr_cli.archs.ttsr.model import Coarse, ReferenceFeatures
    from ttsr_cli.run.ttsr import TTSRRunner
    from ttsr_cli.tiles import TilePlan

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Case:
    """LR and reference sizes, the searches worth running, and whether several LR images
    share one reference (then the reference is encoded once and its cost shared)."""

    title: str
    lr: Size
    ref: Size
    searches: tuple[str, ...] = ("exact", "fast")
    batch: bool = False


CASES = {
    "cufed5": Case("CUFED5 size", (120, 80), (480, 320), batch=True),
    "1000x664": Case("1000x664", (250, 166), (1000, 664)),
    "1mp": Case("1 MP output", (250, 250), (1000, 1000)),
    # Exact would compare 750k x 750k positions (hours): projected from its FLOPs instead.
    "12mp": Case("12 MP output", (1000, 750), (4000, 3000), searches=("fast",)),
}
#: Same cases, tiny: checks the script end to end.  One LR size for all, so the main
#: network's FLOPs are traced once (see ``StageMeter``); the "12 MP" reference still exceeds
#: the fast search's exact-search threshold (``EXACT_KEYS`` lv3 positions), so its pyramid runs.
QUICK_CASES = {
    "cufed5": Case("CUFED5 size (quick)", (8, 8), (48, 32), batch=True),
    "1000x664": Case("1000x664 (quick)", (8, 8), (64, 44)),
    "1mp": Case("1 MP output (quick)", (8, 8), (32, 32)),
    "12mp": Case("12 MP output (quick)", (8, 8), (272, 256), searches=("fast",)),
}
MODELS = ("paper", "bundled")
#: Stages as reported: LTE sums its three passes (query lv3, reference lv1-3, key lv3);
#: "other" is bicubic resizing and array <-> tensor conversion.
LTE_PASSES = ("lte_query", "lte_ref", "lte_key")
STAGES = ("lte", "search", "transfer", "main", "other")
COMPUTE_STAGES = {"lte": "LTE", "search": "search", "main": "main network"}
RATIO_TARGET = 15.0
PSNR_TARGET = 0.05
QUALITY_IMAGES = 10


def cpu() -> torch.device:
    import torch

    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Child process: one model, one or more cases and searches.


def load_model(kind: str) -> tuple[str, TTSR]:
    """(title, model) for ``paper`` or ``bundled``."""
    if kind == "paper":
        return "paper configuration, random weights", paper_model()
    return bundled_model()


def case_images(case: Case, batch: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``batch`` different LR images (one unless the case is a batch) and one reference."""
    count = batch if case.batch else 1
    lrs = [random_images(case.lr, (4, 4), seed)[0] for seed in range(count)]
    return lrs, random_images((4, 4), case.ref)[1]


def warm_up(model: TTSR) -> None:
    """One tiny upscale, so one-time costs (thread pools, kernel choice) are not timed."""
    from ttsr_cli.run.ttsr import TTSRRunner

    TTSRRunner(model, cpu()).upscale(random_images((4, 4), (4, 4))[0])


def run_upscaler(
    upscaler: TTSRRunner, lrs: list[np.ndarray], ref: np.ndarray
) -> tuple[float, np.ndarray, int, TilePlan | None]:
    """End to end as ``ttsr upscale`` runs a batch: (seconds per image, last output, tiles
    used, the tiles the staged run should use)."""
    h, w = lrs[0].shape[:2]
    start = time.perf_counter()
    references = [upscaler.encode_reference(ref)]
    for lr in lrs:
        result = upscaler.upscale_detailed(lr, references)
    seconds = (time.perf_counter() - start) / len(lrs)
    return seconds, result.sr, result.tiles, upscaler.tile_plan(h, w, references)


def main_1x_2x(
    model: TTSR, lr: torch.Tensor, score: torch.Tensor, t_lv3: torch.Tensor, t_lv2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 1 and 2 of the main network, as ``TTSR.upscale_coarse`` runs them."""
    return model.MainNet.forward_1x_2x(lr, score, t_lv3, t_lv2)


def main_4x(
    model: TTSR,
    x1: torch.Tensor,
    x2: torch.Tensor,
    score: torch.Tensor,
    t_lv1: torch.Tensor,
    lrsr: torch.Tensor,
) -> torch.Tensor:
    """The end of ``TTSR.upscale_fine``: stage 3 and the tail, then the global skip if
    configured."""
    sr = model.MainNet.forward_4x(x1, x2, score, t_lv1)
    return (sr + lrsr).clamp(-1.0, 1.0) if model.config.global_skip else sr


def exact_search_gflop(query: Size, key: Size, channels: int, budget: int) -> float:
    """GFLOP of ``relevance_search`` for ``(height, width)`` lv3 grids, without running it.

    Every query block meets every key block, and a block's pixel products cost
    ``2 * channels * (padded query positions) * (padded key positions)``, so the total is
    2C x (sum of padded query blocks) x (sum of padded key blocks).  The one-pixel halos make
    it exceed the ideal 2C x Nq x Nk, by a lot when blocks are only a few rows tall.
    """
    from ttsr_cli.archs.ttsr.attention import _tiles, plan_chunks

    (h, w), (kh, kw) = query, key
    plan = plan_chunks((h + 2) * (w + 2), (kh + 2) * (kw + 2), budget, 4)
    q = sum((t.height + 2) * (t.width + 2) for t in _tiles(h, w, plan.query))
    k = sum((t.height + 2) * (t.width + 2) for t in _tiles(kh, kw, plan.key))
    return 2 * channels * q * k / 1e9


@dataclass
class Counting:
    """What FLOP counting shares across one model's runs: its meta twin (same modules, no
    data) and the counts already made, by input shapes."""

    twin: TTSR
    memo: dict[Any, float]

    @classmethod
    def of(cls, model: TTSR) -> Counting:
        return cls(copy.deepcopy(model).to("meta"), {})


class StagedRun:
    """``TTSRRunner.upscale`` and ``TTSR.upscale`` with each step called on its own: timed, then
    counted once more untimed (on the model's meta twin where shapes alone fix the FLOPs)."""

    def __init__(self, model: TTSR, search: str, budget: int, counting: Counting) -> None:
        from ttsr_cli.archs.ttsr.model import SEARCHES

        self.model = model
        self.twin = counting.twin
        self.search = search
        self.search_fn = SEARCHES[search]
        self.budget = budget
        self.meter = StageMeter(counting.memo)
        #: What the exact search would cost on the same pieces (for projecting skipped cases),
        #: and what it would without block halos: 2 C x query positions x key positions.
        self.exact_gflop = self.ideal_exact_gflop = 0.0
        #: Images or tiles run through the network.
        self.pieces = 0

    def _net(self, stage: str, fn: Callable[..., Any], *args: torch.Tensor) -> Any:
        """``fn(model, *args)``, timed; its FLOPs from ``fn(twin, *meta args)``, once per
        stage and input shapes (other images of a batch, and most tiles, share them)."""
        out = self.meter.time(stage, fn, self.model, *args)
        key = (stage, *(tuple(a.shape) for a in args))
        self.meter.count(stage, fn, self.twin, *map(to_meta, args), key=key)
        return out

    def _other(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.meter.time("other", fn, *args)

    def encode_reference(self, ref: np.ndarray) -> ReferenceFeatures:
        """``TTSRRunner.encode_reference``: values (LTE lv1-3 of Ref), key (lv3 of Ref down-up)."""
        from ttsr_cli.archs.ttsr.model import ReferenceFeatures
        from ttsr_cli.pixels import reference_pair, to_tensor

        ref_img, refsr_img = self._other(reference_pair, ref)
        ref_t = self._other(to_tensor, ref_img, cpu())
        refsr_t = self._other(to_tensor, refsr_img, cpu())
        values = self._net("lte_ref", lambda m, x: m.LTE((x + 1) / 2), ref_t)
        key = self._net("lte_key", lambda m, x: m.LTE.lv3((x + 1) / 2), refsr_t)
        return ReferenceFeatures(key=key, values=values)

    def upscale(
        self, lr: np.ndarray, references: Sequence[ReferenceFeatures], plan: TilePlan | None
    ) -> np.ndarray | None:
        """One LR image, whole or in the TTSRRunner's tiles (both passes); the output when
        untiled."""
        from ttsr_cli.archs.ttsr.model import SCALE, Coarse
        from ttsr_cli.pixels import resize_bicubic, to_image
        from ttsr_cli.tiles import core_slices

        def hr(lr_span: slice) -> slice:
            return slice(lr_span.start * SCALE, lr_span.stop * SCALE)

        h, w = lr.shape[:2]
        lrsr = self._other(resize_bicubic, lr, w * SCALE, h * SCALE)
        if plan is None:
            lr_t, lrsr_t = self._tensors(lr), self._tensors(lrsr)
            coarse = self._coarse_piece(lr_t, lrsr_t, references, None)
            return self._other(to_image, self._fine_piece(coarse, lrsr_t, references))
        whole = None
        for tile in plan.coarse:
            ys, xs = tile.read
            lrsr_t = self._tensors(lrsr[hr(ys), hr(xs)])
            part = self._coarse_piece(self._tensors(lr[ys, xs]), lrsr_t, references, plan.budget)
            whole = whole or Coarse.empty(part, h, w)
            whole.crop(*tile.core).copy_(part.crop(*core_slices(tile)))
        assert whole is not None
        for tile in plan.fine:
            ys, xs = tile.read
            lrsr_t = self._tensors(lrsr[hr(ys), hr(xs)])
            self._fine_piece(whole.crop(ys, xs), lrsr_t, references)
        return None

    def _tensors(self, array: np.ndarray) -> torch.Tensor:
        from ttsr_cli.pixels import to_tensor

        return self._other(to_tensor, array, cpu())

    def _coarse_piece(
        self,
        lr: torch.Tensor,
        lrsr: torch.Tensor,
        references: Sequence[ReferenceFeatures],
        bands: int | None,
    ) -> Coarse:
        """LTE of the query, search, lv3/lv2 transfer, stages 1 and 2: the start of
        ``TTSR.upscale`` (``bands`` None) or ``TTSR.upscale_coarse`` on a tile (its LTE in
        bands within ``bands`` bytes)."""
        from ttsr_cli.archs.ttsr.model import Coarse

        query = self._net("lte_query", lambda m, x: m.LTE.encode_lv3((x + 1) / 2, bands), lrsr)
        match = self._search(query, [r.key for r in references])
        size = tuple(query.shape[-2:])
        t_lv3, t_lv2 = (self._transfer(references, level, match.index, size) for level in (2, 1))
        x1, x2 = self._net("main", main_1x_2x, lr, match.score, t_lv3, t_lv2)
        return Coarse(x1, x2, match.score, match.index.view(-1, *size))

    def _fine_piece(
        self, coarse: Coarse, lrsr: torch.Tensor, references: Sequence[ReferenceFeatures]
    ) -> torch.Tensor:
        """``TTSR.upscale_fine`` on one image or tile: lv1 transfer, stage 3 and the tail."""
        self.pieces += 1
        size = tuple(coarse.S.shape[-2:])
        t_lv1 = self._transfer(references, 0, coarse.index.reshape(1, -1), size)
        return self._net("main", main_4x, coarse.x1, coarse.x2, coarse.S, t_lv1, lrsr)

    def _transfer(
        self,
        references: Sequence[ReferenceFeatures],
        level: int,
        index: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """One level's texture transfer, timed (gathers and sums only: no FLOPs to count)."""
        from ttsr_cli.archs.ttsr.attention import transfer

        values = [r.values[level] for r in references]
        return self.meter.time("transfer", transfer, values, index, size, (4, 2, 1)[level])

    def _search(self, query: torch.Tensor, keys: list[torch.Tensor]) -> Correspondence:
        """The relevance search, timed and counted; also what exact would cost here."""
        match = self.meter.time("search", self.search_fn, query, keys, self.budget)
        if self.search == "exact":
            shapes = ("search", self.budget, tuple(query.shape), *(tuple(k.shape) for k in keys))
            meta = (to_meta(query), [to_meta(k) for k in keys], self.budget)
            self.meter.count("search", self.search_fn, *meta, key=shapes)
        else:  # it reads index values (int(), gathers): it cannot run on meta tensors
            self.meter.count("search", self.search_fn, query, keys, self.budget)
        size, channels = tuple(query.shape[-2:]), query.shape[1]
        self.exact_gflop += sum(
            exact_search_gflop(size, tuple(k.shape[-2:]), channels, self.budget) for k in keys
        )
        positions = size[0] * size[1] * sum(k.shape[-2] * k.shape[-1] for k in keys)
        self.ideal_exact_gflop += 2 * channels * positions / 1e9
        return match


@dataclass(frozen=True)
class Settings:
    """What ``ttsr upscale --precision`` and ``--max-memory`` set (None: the default budget)."""

    precision: str = "fp32"
    memory_budget: int | None = None


def measure(
    model: TTSR,
    lrs: list[np.ndarray],
    ref: np.ndarray,
    search: str,
    counting: Counting,
    settings: Settings,
) -> dict:
    """One search on one case: TTSRRunner end to end (and its peak RSS), then staged."""
    import contextlib

    import torch

    from ttsr_cli.devices import default_search_budget
    from ttsr_cli.run.ttsr import TTSRRunner

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[settings.precision]
    upscaler = TTSRRunner(
        model, cpu(), search=search, precision=dtype, memory_budget=settings.memory_budget
    )
    upscaler_s, sr, tiles, plan = run_upscaler(upscaler, lrs, ref)
    peak = peak_rss_mib()
    budget = upscaler.search_budget or default_search_budget(cpu())
    staged = StagedRun(model, search, budget, counting)
    reduced = dtype != torch.float32
    with torch.autocast("cpu", dtype) if reduced else contextlib.nullcontext():
        references = [staged.encode_reference(ref)]
        for lr in lrs:
            staged_sr = staged.upscale(lr, references, plan)
    n = len(lrs)
    diff = None if staged_sr is None else int(np.abs(staged_sr.astype(int) - sr).max())
    return {
        "upscaler_s": upscaler_s,
        "tiles": tiles,
        "staged_tiles": staged.pieces // n,
        "peak_mib": peak,
        "seconds": {k: v / n for k, v in staged.meter.seconds.items()},
        "gflop": {k: v / n for k, v in staged.meter.gflop.items()},
        "exact_search_gflop": staged.exact_gflop / n,
        "ideal_exact_search_gflop": staged.ideal_exact_gflop / n,
        "search_budget_mib": staged.budget / 2**20,
        # Same model, inputs and ops: any difference means the staged run is not the TTSRRunner's.
        "max_abs_diff": diff,
    }


def child(
    names: list[str],
    kind: str,
    searches: list[str] | None,
    quick: bool,
    batch: int,
    settings: Settings,
) -> None:
    """Measure cases ``names`` (each with ``searches``, default its own) with one model and
    print one JSON line."""
    import torch

    start = time.perf_counter()
    title, model = load_model(kind)
    model.eval()
    record: dict[str, Any] = {"title": title, "threads": torch.get_num_threads(), "cases": {}}
    record.update(precision=settings.precision, memory_budget=settings.memory_budget)
    counting = Counting.of(model)
    with torch.inference_mode():
        warm_up(model)
        for name in names:
            case = (QUICK_CASES if quick else CASES)[name]
            lrs, ref = case_images(case, batch)
            runs = {
                s: measure(model, lrs, ref, s, counting, settings)
                for s in searches or case.searches
            }
            record["cases"][name] = {"images": len(lrs), "runs": runs}
    record["process_s"] = time.perf_counter() - start
    print(json.dumps(record))


# --------------------------------------------------------------------------------------------
# Parent: run the children, print the tables.


def stage_seconds(run: dict) -> dict[str, float]:
    """The reported stages' seconds per image (LTE passes summed)."""
    seconds = dict(run["seconds"])
    seconds["lte"] = sum(seconds.pop(p, 0.0) for p in LTE_PASSES)
    return {stage: seconds.get(stage, 0.0) for stage in STAGES}


def stage_gflop(run: dict) -> dict[str, float]:
    gflop = dict(run["gflop"])
    gflop["lte"] = sum(gflop.pop(p, 0.0) for p in LTE_PASSES)
    return gflop


def exact_rate(cases: dict[str, dict]) -> tuple[float, str] | None:
    """The exact search's achieved GFLOP/s in the largest exact case measured, and its name."""
    measured = [
        (stage_gflop(r["runs"]["exact"])["search"], name, r["runs"]["exact"])
        for name, r in cases.items()
        if "exact" in r["runs"]
    ]
    if not measured:
        return None
    gflop, name, run = max(measured, key=lambda m: m[0])
    return gflop / max(run["seconds"]["search"], 1e-9), name


def projection(case: dict, cases: dict[str, dict], peak: float) -> dict:
    """Minutes the skipped exact search would take: its FLOPs over the measured exact rate
    (the matmul peak, an optimistic bound, when no exact case ran)."""
    gflop = next(iter(case["runs"].values()))["exact_search_gflop"]
    rate, basis = exact_rate(cases) or (peak, "matmul peak")
    return {"gflop": gflop, "gflops": rate, "basis": basis, "minutes": gflop / rate / 60}


def fmt_s(seconds: float) -> str:
    """Three significant-ish digits: 0.123, 12.34, 1234."""
    if seconds < 1:
        return f"{seconds:.3f}"
    return f"{seconds:.2f}" if seconds < 100 else f"{seconds:.0f}"


def fmt_num(value: float) -> str:
    """Whole numbers from 10 up, two significant digits below (quick sizes are tiny)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def fmt_size(size: Size, scale: int = 1) -> str:
    return f"{size[0] * scale}x{size[1] * scale}"


def time_table(model: dict, cases: dict[str, Case]) -> list[str]:
    lines = [
        "| case | LR -> SR | Ref | search | LTE | search | transfer | main net | other | "
        "stage sum | TTSRRunner | tiles | peak RSS |",
        "|---|---|---|---|" + "---:|" * 9,
    ]
    for name, record in model["cases"].items():
        case = cases[name]
        head = f"| {case.title} | {fmt_size(case.lr)} -> {fmt_size(case.lr, 4)} | "
        head += f"{fmt_size(case.ref)} | "
        for search in ("exact", "fast"):
            if search not in record["runs"]:
                p = model["projections"].get(name)
                if p:
                    note = f"skipped (exact: ~{fmt_num(p['minutes'])} min projected)"
                    lines.append(head + f"exact | — | {note} |" + " — |" * 7)
                continue
            run = record["runs"][search]
            s = stage_seconds(run)
            cells = [fmt_s(s[k]) for k in STAGES]
            tiles = str(run["tiles"])
            if run["staged_tiles"] != run["tiles"]:
                tiles += f" (staged: {run['staged_tiles']})"
            cells += [fmt_s(sum(s.values())), fmt_s(run["upscaler_s"]), tiles]
            cells.append(f"{run['peak_mib'] / 1024:.2f} GiB")
            lines.append(head + f"{search} | " + " | ".join(cells) + " |")
    return lines


def compute_table(model: dict, cases: dict[str, Case], peak: float) -> list[str]:
    lines = [
        "| case | search | stage | GFLOP | s | GFLOP/s | % of peak |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, record in model["cases"].items():
        for search, run in record["runs"].items():
            seconds, gflop = stage_seconds(run), stage_gflop(run)
            for stage, label in COMPUTE_STAGES.items():
                rate = gflop.get(stage, 0.0) / max(seconds[stage], 1e-9)
                lines.append(
                    f"| {cases[name].title} | {search} | {label} | {fmt_num(gflop.get(stage, 0))} "
                    f"| {fmt_s(seconds[stage])} | {fmt_num(rate)} | {rate / peak:.0%} |"
                )
    return lines


def time_ratio(model: dict) -> dict | None:
    """1 MP -> 12 MP output, fast search, TTSRRunner end to end: the time ratio for 12x pixels."""
    small = model["cases"].get("1mp", {}).get("runs", {}).get("fast")
    large = model["cases"].get("12mp", {}).get("runs", {}).get("fast")
    if not small or not large:
        return None
    ratio = large["upscaler_s"] / small["upscaler_s"]
    return {"1mp_s": small["upscaler_s"], "12mp_s": large["upscaler_s"], "ratio": ratio}


def ratio_line(ratio: dict) -> str:
    verdict = "meets" if ratio["ratio"] <= RATIO_TARGET else "misses"
    return (
        f"1 MP -> 12 MP output (fast search, TTSRRunner end to end): {fmt_s(ratio['1mp_s'])} s "
        f"-> {fmt_s(ratio['12mp_s'])} s, **{ratio['ratio']:.1f}x** for 12x the pixels "
        f"({verdict} the target of <= {RATIO_TARGET:.0f}x)."
    )


def halo_line(model: dict, cases: dict[str, Case]) -> str | None:
    """How much more the exact search multiplies than 2C x Nq x Nk, from its block halos
    (the analytic count, which the measured exact cases confirm)."""
    parts = []
    for name, record in model["cases"].items():
        run = next(iter(record["runs"].values()))
        overhead = run["exact_search_gflop"] / max(run["ideal_exact_search_gflop"], 1e-12) - 1
        parts.append(f"{cases[name].title} +{overhead:.0%}")
    if not parts:
        return None
    return "Exact search's pixel products beyond 2C x Nq x Nk (block halos): " + ", ".join(parts)


def print_model(model: dict, cases: dict[str, Case], peak: float, args: argparse.Namespace) -> None:
    print(f"### {model['title']}\n")
    shared = f"; CUFED5 size: batch of {args.batch} LR images, reference encoded once" * (
        "cufed5" in model["cases"]
    )
    process = "all cases in one process (--quick)" if args.quick else "a fresh process each"
    print(
        f"Wall seconds per image{shared}. Stages as `TTSR.upscale` runs them (LTE: query "
        "lv3, reference lv1-3 and key lv3 passes; other: bicubic resizing and array/tensor "
        "conversion; tile blending not included); TTSRRunner: the same images end to end. "
        f"Peak RSS: by the end of the TTSRRunner run, {process}.\n"
    )
    print("\n".join(time_table(model, cases)) + "\n")
    for name, p in model["projections"].items():
        print(
            f"{cases[name].title}, exact search: {fmt_num(p['gflop'])} GFLOP at "
            f"{p['gflops']:.1f} GFLOP/s (the exact search's rate in "
            f"{cases[p['basis']].title if p['basis'] in cases else p['basis']}) "
            f"= ~{fmt_num(p['minutes'])} min.\n"
        )
    if model["ratio"]:
        print(ratio_line(model["ratio"]) + "\n")
    print("\n".join(compute_table(model, cases, peak)) + "\n")
    if line := halo_line(model, cases):
        print(line + ".\n")
    for name, record in model["cases"].items():
        for search, run in record["runs"].items():
            if run["max_abs_diff"]:
                print(
                    f"Note: {name}/{search}: staged output differs from the TTSRRunner's by up "
                    f"to {run['max_abs_diff']} levels.\n"
                )


def jobs(args: argparse.Namespace, cases: dict[str, Case]) -> list[tuple[list[str], list[str]]]:
    """(cases, searches) per child process: one per case and search, so that each peak RSS
    is its own; with --quick one for everything (peaks then accumulate), to start fewer."""
    if args.quick:
        return [(args.cases, [])]
    return [([name], [s]) for name in args.cases for s in cases[name].searches]


def run_cases(args: argparse.Namespace, cases: dict[str, Case], peak: float) -> dict:
    """Run every job for both models; merge their records per case."""
    results: dict[str, dict] = {}
    for kind in MODELS:
        model: dict[str, Any] = {"cases": {name: {"runs": {}} for name in args.cases}}
        for names, searches in jobs(args, cases):
            label = f"{kind}: {', '.join(names)} {'+'.join(searches)}"
            print(f"{label} ...", file=sys.stderr, flush=True)
            extra = ["--model", kind, "--batch", str(args.batch)] + ["--quick"] * args.quick
            extra += ["--precision", args.precision]
            extra += ["--max-memory", args.max_memory] if args.max_memory else []
            extra += [a for s in searches for a in ("--search", s)]
            record = run_child(__file__, ",".join(names), *extra)
            for name, measured in record.pop("cases").items():
                model["cases"][name]["runs"].update(measured.pop("runs"))
                model["cases"][name].update(measured)
            model.update(record)
        model["projections"] = {
            name: projection(model["cases"][name], model["cases"], peak)
            for name in args.cases
            if "exact" not in cases[name].searches
        }
        model["ratio"] = time_ratio(model)
        results[kind] = model
    return results


# --------------------------------------------------------------------------------------------
# Quality: does the fast search cost PSNR?


def quality_sets(quick: bool) -> dict[str, list[tuple[np.ndarray, np.ndarray | None]]]:
    """(HR, reference or None for self-reference) pairs: the first Urban100 images, and the
    retrieval pairs of ``bench_match_ref`` (query crop, shifted and rescaled true reference)."""
    from bench_match_ref import DEFAULT_DATA, retrieval_pairs

    from ttsr_cli.imageio import read_rgb

    count = 2 if quick else QUALITY_IMAGES
    paths = sorted(DEFAULT_DATA.glob("*.png"))[:count]
    crop = (slice(0, 288), slice(0, 288)) if quick else (slice(None), slice(None))
    return {
        f"Urban100, first {count}, self-reference": [(read_rgb(p)[crop], None) for p in paths],
        f"Urban100 retrieval pairs (bench_match_ref), first {count}": list(
            retrieval_pairs(DEFAULT_DATA, limit=count)
        ),
    }


def quality(weights: Path, quick: bool) -> dict:
    """Mean PSNR of exact and fast search on each quality set, with the model ``weights``."""
    from ttsr_cli.run.ttsr import TTSRRunner
    from ttsr_cli.weights import load as load_weights

    model = load_weights(weights)[0]
    upscalers = {s: TTSRRunner(model, cpu(), search=s) for s in ("exact", "fast")}
    sets = {name: score_set(upscalers, pairs) for name, pairs in quality_sets(quick).items()}
    return {"weights": str(weights), "sets": sets}


def score_set(
    upscalers: dict[str, TTSRRunner], pairs: list[tuple[np.ndarray, np.ndarray | None]]
) -> dict:
    """Mean PSNR as ``ttsr evaluate`` measures it (x4 bicubic LR, TTSR protocol), for each
    search and for bicubic (checks the set-up), and the share of matches fast moved."""
    from ttsr_cli.metrics import score
    from ttsr_cli.pixels import degrade

    psnr: dict[str, list[float]] = {"bicubic": [], "exact": [], "fast": []}
    moved = total = 0
    for image, ref in pairs:
        hr, lr, bicubic = degrade(image, 4)
        psnr["bicubic"].append(score(bicubic, hr, "ttsr").psnr)
        sources = {}
        for search, upscaler in upscalers.items():
            references = None if ref is None else [upscaler.encode_reference(ref)]
            result = upscaler.upscale_detailed(lr, references)
            psnr[search].append(score(result.sr, hr, "ttsr").psnr)
            sources[search] = result.source
        moved += int((sources["exact"] != sources["fast"]).sum())
        total += sources["exact"].size
    means = {name: float(np.mean(values)) for name, values in psnr.items()}
    means.update(images=len(pairs), difference=means["fast"] - means["exact"])
    return {**means, "matches_moved": moved / total}


def quality_report(args: argparse.Namespace) -> dict | None:
    """The quality table with ``--weights``, else the bundled model; None without either
    (random weights would make PSNR meaningless)."""
    weights = args.weights or bundled_weights()
    if weights is None:
        print("Quality table skipped: no bundled model yet and no --weights given.\n")
        return None
    result = quality(weights, args.quick)
    print_quality(result)
    return result


def print_quality(result: dict) -> None:
    print(f"### Fast vs exact search: PSNR (dB, Y, TTSR protocol), {result['weights']}\n")
    print(
        "| set | images | bicubic | exact | fast | fast - exact | within target | matches moved |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for name, r in result["sets"].items():
        verdict = "yes" if r["difference"] >= -PSNR_TARGET else "**no**"
        print(
            f"| {name} | {r['images']} | {r['bicubic']:.3f} | {r['exact']:.3f} | {r['fast']:.3f} | "
            f"{r['difference']:+.3f} | {verdict} | {r['matches_moved']:.1%} |"
        )
    print(
        f"\nTarget: fast loses at most {PSNR_TARGET} dB. Matches moved: LR positions whose "
        "best reference patch differs between the searches.\n"
    )


# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--batch", type=int, help="LR images in the CUFED5 case (default 5)")
    parser.add_argument(
        "--weights",
        type=Path,
        help="Trained weights for the quality table "
        "(default: the bundled model; none: the table is skipped).",
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--max-memory", help="Upscale budget, as `ttsr upscale --max-memory`.")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: checks that it runs.")
    parser.add_argument("--json", type=Path, help="Also write every number to this file.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--search", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch = args.batch or (2 if args.quick else 5)
    args.cases = [c for c in CASES if c in args.cases]  # tables in the order of CASES
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        from ttsr_cli.devices import parse_size

        budget = parse_size(args.max_memory) if args.max_memory else None
        settings = Settings(args.precision, budget)
        child(args.child.split(","), args.model, args.search, args.quick, args.batch, settings)
        return
    import torch

    cases = QUICK_CASES if args.quick else CASES
    size, repeats = (1024, 3) if args.quick else (4096, 5)
    peak = matmul_peak_gflops(size, repeats)
    if args.quick:
        print("**--quick: tiny sizes; the numbers only show that the benchmark runs.**\n")
    print(
        f"{args.precision}, CPU ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; matmul peak "
        f"{peak:.1f} GFLOP/s (torch.mm {size}x{size}, best of {repeats}). GFLOP: matrix "
        "products and convolutions only (FlopCounterMode).\n"
    )
    results = run_cases(args, cases, peak)
    for model in results.values():
        print_model(model, cases, peak, args)
    report: dict[str, Any] = {"peak_gflops": peak, "threads": torch.get_num_threads()}
    report.update(quick=args.quick, batch=args.batch, models=results)
    if not args.skip_quality:
        report["quality"] = quality_report(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
