"""Planning a batch: which files, where each result goes, which references each uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import sample_image, save_png
from ttsr_cli.batch import (
    OutputOptions,
    ReferenceOptions,
    Source,
    collect_inputs,
    plan,
    select_shard,
)
from ttsr_cli.errors import TTSRError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """photos/{a.png, b.jpg, a_ttsr.png (an earlier output), notes.txt, sub/c.png}."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    image = sample_image("astronaut", (8, 6))
    for name in ("a.png", "b.jpg", "a_ttsr.png", "sub/c.png"):
        save_png(photos / name, image)
    (photos / "notes.txt").write_text("not an image")
    return photos


def names(sources: list[Source]) -> list[str]:
    return [s.path.name for s in sources]


def test_folders_globs_and_files(tree: Path) -> None:
    assert names(collect_inputs([tree])) == ["a.png", "b.jpg"]
    assert names(collect_inputs([tree], recursive=True)) == ["a.png", "b.jpg", "c.png"]
    assert names(collect_inputs([tree / "*.png", tree / "a.png"])) == ["a.png", "a_ttsr.png"]
    assert names(collect_inputs([tree / "missing.png"])) == ["missing.png"]  # fails later
    with pytest.raises(TTSRError, match="no files match"):
        collect_inputs([tree / "*.gif"])


def test_shards_split_the_sorted_list(tree: Path) -> None:
    sources = collect_inputs([tree], recursive=True)
    shards = [names(select_shard(sources, f"{k}/2")) for k in (1, 2)]
    assert shards == [["a.png", "c.png"], ["b.jpg"]]
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(TTSRError, match="shard"):
            select_shard(sources, bad)


def test_outputs_beside_inputs_or_under_a_folder(tree: Path, tmp_path: Path) -> None:
    sources = collect_inputs([tree], recursive=True)
    beside = plan(sources, OutputOptions(), ReferenceOptions())
    assert [j.destination for j in beside] == [
        tree / "a_ttsr.png",
        tree / "b_ttsr.png",
        tree / "sub" / "c_ttsr.png",
    ]
    out = tmp_path / "out"
    under = plan(sources, OutputOptions(out, "_x4", "same"), ReferenceOptions())
    assert [j.destination for j in under] == [
        out / "a_x4.png",
        out / "b_x4.jpg",
        out / "sub/c_x4.png",
    ]
    one = plan(sources[:1], OutputOptions(tmp_path / "result"), ReferenceOptions())
    assert one[0].destination == tmp_path / "result" / "a_ttsr.png"  # no extension: a folder


def test_collisions_and_inputs_are_never_overwritten(tree: Path, tmp_path: Path) -> None:
    sources = [Source(tree / "a.png"), Source(tree / "a_ttsr.png"), Source(tree / "sub/c.png")]
    jobs = plan(sources, OutputOptions(tmp_path / "o", suffix=""), ReferenceOptions())
    assert [j.problem is None for j in jobs] == [True, True, True]
    flat = [Source(tree / "a.png"), Source(tree / "sub" / "a.png")]
    save_png(tree / "sub" / "a.png", sample_image("astronaut", (8, 6)))
    jobs = plan(flat, OutputOptions(tmp_path / "o"), ReferenceOptions())
    assert jobs[0].problem is None and "also be written" in jobs[1].problem
    jobs = plan([Source(tree / "a.png")], OutputOptions(suffix=""), ReferenceOptions())
    assert "overwrite" in jobs[0].problem


@pytest.mark.parametrize(
    ("options", "count", "fragment"),
    [
        (OutputOptions(fmt="gif"), 1, "--format"),
        (OutputOptions(quality=0), 1, "--quality"),
        (OutputOptions(suffix="a/b"), 1, "--suffix"),
        (OutputOptions(Path("out.xyz")), 1, "out.xyz"),
        (OutputOptions(Path("out.png"), fmt="jpg"), 1, "does not match"),
    ],
)
def test_bad_output_options(tree: Path, options, count: int, fragment: str) -> None:
    sources = collect_inputs([tree])[:count]
    with pytest.raises(TTSRError, match=fragment):
        plan(sources, options, ReferenceOptions())


def test_several_inputs_need_an_output_folder(tree: Path) -> None:
    with pytest.raises(TTSRError, match="must be a folder"):
        plan(collect_inputs([tree]), OutputOptions(tree / "a.png"), ReferenceOptions())


def test_reference_precedence_map_then_folder_then_common(tree: Path, tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    for name in ("a.jpg", "b.png", "common.png", "other.png"):
        save_png(refs / name, sample_image("coffee", (8, 8)))
    csv = tmp_path / "map.csv"
    csv.write_text("input,ref\nphotos/b.jpg,refs/other.png,refs/a.jpg\n")
    sources = collect_inputs([tree], recursive=True)
    options = ReferenceOptions((refs / "common.png",), refs, csv)
    jobs = plan(sources, OutputOptions(), options)
    chosen = {j.source.name: [r.name for r in j.references] for j in jobs}
    assert chosen == {"a.png": ["a.jpg"], "b.jpg": ["other.png", "a.jpg"], "c.png": ["common.png"]}
    self_ref = plan(sources, OutputOptions(), ReferenceOptions())
    assert all(j.references == () for j in self_ref)


def test_reference_folder_without_a_match_is_a_configuration_error(
    tree: Path, tmp_path: Path
) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    save_png(refs / "a.png", sample_image("coffee", (8, 8)))
    with pytest.raises(TTSRError, match=r"no reference named b\.\*"):
        plan(collect_inputs([tree]), OutputOptions(), ReferenceOptions(ref_dir=refs))
    save_png(refs / "b.png", sample_image("coffee", (8, 8)))
    save_png(refs / "b.jpg", sample_image("coffee", (8, 8)))
    with pytest.raises(TTSRError, match="several references"):
        plan(collect_inputs([tree]), OutputOptions(), ReferenceOptions(ref_dir=refs))


def test_bad_reference_map(tree: Path, tmp_path: Path) -> None:
    csv = tmp_path / "map.csv"
    csv.write_text("photos/a.png\n")
    with pytest.raises(TTSRError, match="names no reference"):
        plan(collect_inputs([tree]), OutputOptions(), ReferenceOptions(ref_map=csv))
    with pytest.raises(TTSRError, match="cannot read"):
        plan(collect_inputs([tree]), OutputOptions(), ReferenceOptions(ref_map=tmp_path / "no"))
