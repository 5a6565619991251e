"""The TensorFlow checkpoint reader: the RL-Restore authors' checkpoints read bit-exactly as
TensorFlow's own reader reads them, synthetic bundles for what those lack (several shards and
index blocks, more dtypes, strings), and damaged or foreign files refused in one line that
names the file."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED
from ttsr_cli.errors import TTSRError
from ttsr_cli.tfcheckpoint import checkpoint_prefix, read_bundle

FIXTURE = SHARED / "fixtures" / "rl-restore-official"
TOOLS = [f"tool{number:02d}" for number in range(1, 13)]
#: numpy dtypes and their TensorFlow ``DataType`` numbers, for the synthetic bundles.
TF_DTYPES = {"f4": 1, "f8": 2, "i4": 3, "u1": 4, "i2": 5, "c8": 8, "i8": 9, "b1": 10, "f2": 19}
DT_STRING = 7
DT_BFLOAT16 = 14


@pytest.fixture
def official_tf() -> Path:
    if not (FIXTURE / "weights.npz").is_file():
        pytest.skip(f"RL-Restore TensorFlow fixture not found at {FIXTURE} (../shared is absent)")
    return FIXTURE


def expect_error(prefix: Path, file: Path, *words: str) -> None:
    """Reading ``prefix`` fails in one line that names ``file`` and says ``words``."""
    with pytest.raises(TTSRError) as info:
        read_bundle(prefix)
    message = str(info.value)
    assert "\n" not in message
    assert str(file) in message
    for word in words:
        assert word in message


def test_every_official_variable_reads_as_tensorflow_reads_it(official_tf: Path) -> None:
    expected = np.load(official_tf / "weights.npz")
    read = {}
    for tool in TOOLS:
        for name, array in read_bundle(official_tf / "tf" / "toolbox" / tool).items():
            read[f"{tool}/{name}"] = array
    read.update(read_bundle(official_tf / "tf" / "models" / "model"))
    assert sorted(read) == sorted(expected.files)
    assert len(read) == 147
    for key in expected.files:
        want, got = expected[key], read[key]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), key
        assert got.tobytes() == want.tobytes(), key
    assert read["step/step"].dtype == np.int32 and int(read["step/step"]) == 1050000


def test_checkpoint_prefix_follows_the_state_file(official_tf: Path) -> None:
    assert (
        checkpoint_prefix(official_tf / "tf" / "toolbox")
        == official_tf / "tf" / "toolbox" / "tool12"
    )
    assert (
        checkpoint_prefix(official_tf / "tf" / "models") == official_tf / "tf" / "models" / "model"
    )


def test_checkpoint_prefix_absolute_moved_and_without_state_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "other" / "run"
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{elsewhere}"\n')
    assert checkpoint_prefix(tmp_path) == elsewhere
    (tmp_path / "run.index").write_bytes(b"")  # the folder was moved from the trainer's disk
    assert checkpoint_prefix(tmp_path) == tmp_path / "run"
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "sub/caf\\303\\251.ckpt-7"\n')
    assert checkpoint_prefix(tmp_path) == tmp_path / "sub" / "café.ckpt-7"
    (tmp_path / "checkpoint").unlink()
    assert checkpoint_prefix(tmp_path) == tmp_path / "run"
    (tmp_path / "model.ckpt-9.index").write_bytes(b"")
    with pytest.raises(TTSRError, match=r"2 \*\.index files"):
        checkpoint_prefix(tmp_path)
    with pytest.raises(TTSRError, match="folder not found"):
        checkpoint_prefix(tmp_path / "absent")


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(bytes(data))


def png_bytes(path: Path) -> None:
    path.write_bytes(next((FIXTURE / "png").glob("*.png")).read_bytes())


DATA = "tool03.data-00000-of-00001"
#: (how a copy of tool03 is damaged, the file the error must name, words it must say)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    "truncated data": (lambda p: truncate(p, 0.6), DATA, ("truncated",)),
    "truncated index": (lambda p: truncate(p, 0.9), "tool03.index", ("truncated",)),
    "index magic": (lambda p: flip(p, -1), "tool03.index", ("not a TensorFlow checkpoint",)),
    "missing shard": (Path.unlink, DATA, ("data shard not found",)),
    "missing index": (Path.unlink, "tool03.index", ("index not found",)),
    "png as index": (png_bytes, "tool03.index", ("not a TensorFlow checkpoint",)),
    "flipped data byte": (lambda p: flip(p, 1000), DATA, ("CRC-32C",)),
    "flipped index byte": (lambda p: flip(p, 40), "tool03.index", ("CRC-32C",)),
}


@pytest.mark.parametrize("damage", CORRUPTIONS)
def test_damaged_copies_fail_in_one_line_naming_the_file(
    official_tf: Path, tmp_path: Path, damage: str
) -> None:
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(official_tf / "tf" / "toolbox" / f"tool03{suffix}", tmp_path)
    spoil, victim, words = CORRUPTIONS[damage]
    spoil(tmp_path / victim)
    expect_error(tmp_path / "tool03", tmp_path / victim, *words)


# A minimal tensor bundle writer (LevelDB table + protobuf), for the cases the official
# checkpoints lack. It follows TensorFlow's writer, with its own bit-at-a-time CRC-32C.


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def field(number: int, value: int | bytes) -> bytes:
    """A protobuf field; zero numbers are left out, as proto3 writers do."""
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    return varint(number << 3) + varint(value) if value else b""


def block(pairs: list[tuple[bytes, bytes]], kind: int = 0) -> bytes:
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in pairs)
    body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
    return body + bytes([kind]) + masked(body + bytes([kind])).to_bytes(4, "little")


def table(pairs: list[tuple[bytes, bytes]], per_block: int = 64, kind: int = 0) -> bytes:
    """A LevelDB table of ``pairs`` (in key order), ``per_block`` of them per data block."""
    out, index = b"", []
    for start in range(0, len(pairs), per_block):
        chunk = pairs[start : start + per_block]
        index.append((chunk[-1][0], varint(len(out)) + varint(len(block(chunk)) - 5)))
        out += block(chunk, kind)
    handles = varint(len(out)) + varint(8)  # the empty metaindex block
    out += block([])
    handles += varint(len(out)) + varint(len(block(index)) - 5)
    out += block(index)
    return out + handles.ljust(40, b"\0") + (0xDB4775248B80FB57).to_bytes(8, "little")


def tensor_record(array: np.ndarray) -> tuple[int, tuple[int, ...], bytes, int]:
    """TensorFlow's dtype number, shape, stored bytes and the CRC of what it checksums."""
    if array.dtype == object:
        lengths = [len(value) for value in array.flat]
        packed = b"".join(n.to_bytes(4, "little") for n in lengths)
        stored = masked(packed).to_bytes(4, "little")
        body = b"".join(array.flat)
        data = b"".join(map(varint, lengths)) + stored + body
        return DT_STRING, array.shape, data, masked(packed + stored + body)
    code = TF_DTYPES[array.dtype.str[1:]]
    return code, array.shape, array.tobytes(), masked(array.tobytes())


def entry_proto(record: tuple[int, tuple[int, ...], bytes, int], shard: int, offset: int) -> bytes:
    """The ``BundleEntryProto`` of a tensor stored at ``offset`` of data file ``shard``."""
    dtype, shape, data, crc = record
    dims = b"".join(field(2, field(1, size)) for size in shape)
    entry = field(1, dtype) + field(2, dims) + field(3, shard) + field(4, offset)
    return entry + field(5, len(data)) + bytes([6 << 3 | 5]) + crc.to_bytes(4, "little")


def write_bundle(
    prefix: Path,
    records: dict[str, tuple[int, tuple[int, ...], bytes, int]],
    shards: int = 1,
    per_block: int = 64,
    header: bytes = b"",
    kind: int = 0,
) -> None:
    """Variable ``i`` (in name order) goes to shard ``i % shards``."""
    files = [b""] * shards
    pairs = [(b"", header or field(1, shards) + field(3, field(1, 1)))]
    for number, name in enumerate(sorted(records)):
        shard = number % shards
        pairs.append((name.encode(), entry_proto(records[name], shard, len(files[shard]))))
        files[shard] += records[name][2]
    Path(f"{prefix}.index").write_bytes(table(pairs, per_block, kind))
    for shard, data in enumerate(files):
        Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}").write_bytes(data)


def test_shards_index_blocks_dtypes_and_strings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "a/double": rng.standard_normal((3, 4)),
        "a/half": rng.standard_normal(5).astype(np.float16),
        "b/long": np.array(2**40 + 3, dtype=np.int64),
        "b/mask": np.array([[True, False], [False, True]]),
        "b/bytes": np.zeros((0, 3), np.uint8),
        "c/short": np.array([-7, 7], np.int16),
        "c/complex": np.array([1 + 2j], np.complex64),
        "c/kernel": rng.standard_normal((10, 300)).astype(np.float32),  # several CRC lanes
        "d/int": np.arange(6, dtype=np.int32).reshape(2, 3),
        "d/names": np.array([b"", b"caf\xc3\xa9", b"x" * 300], dtype=object),
    }
    write_bundle(tmp_path / "ckpt", {k: tensor_record(v) for k, v in arrays.items()}, 3, 2)
    read = read_bundle(tmp_path / "ckpt")
    assert list(read) == sorted(arrays)
    for name, array in arrays.items():
        assert (read[name].dtype, read[name].shape) == (array.dtype, array.shape), name
        assert np.array_equal(read[name], array), name
    Path(f"{tmp_path / 'ckpt'}.data-00001-of-00003").unlink()
    expect_error(tmp_path / "ckpt", tmp_path / "ckpt.data-00001-of-00003", "not found")


def test_unsupported_features_are_named(tmp_path: Path) -> None:
    prefix = tmp_path / "ckpt"
    index = tmp_path / "ckpt.index"
    weight = tensor_record(np.ones(2, np.float32))
    write_bundle(prefix, {"w": weight, "bf": (DT_BFLOAT16, (2,), b"\0" * 4, masked(b"\0" * 4))})
    expect_error(prefix, index, "'bf'", "bfloat16", "not supported")
    write_bundle(prefix, {"w": weight}, kind=1)
    expect_error(prefix, index, "snappy", "not supported")
    write_bundle(prefix, {"w": weight}, header=field(1, 1) + field(2, 1))
    expect_error(prefix, index, "big-endian", "not supported")
    write_bundle(prefix, {"\x00\x01slice": weight})  # how a slice's key starts
    expect_error(prefix, index, "partitioned", "not supported")
    # A partitioned variable's own entry lists its slices (field 7) and holds no data.
    entry = field(1, 1) + field(2, field(2, field(1, 2))) + field(7, b"")
    index.write_bytes(table([(b"", field(1, 1)), (b"p", entry)]))
    expect_error(prefix, index, "'p'", "partitioned", "not supported")


def spoilt_indexes(original: bytes) -> list[bytes]:
    """Every truncation and every single-byte flip of an index file."""
    cuts = [original[:cut] for cut in range(len(original))]
    flips = [bytearray(original) for _ in original]
    for at, flipped in enumerate(flips):
        flipped[at] ^= 0xFF
    return cuts + [bytes(flipped) for flipped in flips]


def damaged_entries(records: dict[str, tuple[int, tuple[int, ...], bytes, int]]) -> list[bytes]:
    """Indexes of one entry with 1-3 random bytes changed, behind valid block checksums: the
    parsing paths that a block CRC check would otherwise shield from damage."""
    rng = np.random.default_rng(0)
    offsets = {"s": 0, "w": len(records["s"][2])}
    tables = []
    for _ in range(200):
        name = str(rng.choice(sorted(records)))
        entry = bytearray(entry_proto(records[name], 0, offsets[name]))
        for at in rng.integers(0, len(entry), rng.integers(1, 4)):
            entry[at] = rng.integers(0, 256)
        tables.append(table([(b"", field(1, 1)), (name.encode(), bytes(entry))]))
    return tables


def test_malformed_bytes_never_escape_as_raw_exceptions(official_tf: Path, tmp_path: Path) -> None:
    real = tmp_path / "real" / "tool01"
    real.parent.mkdir()
    shutil.copy(official_tf / "tf" / "toolbox" / "tool01.data-00000-of-00001", real.parent)
    synthetic = tmp_path / "synthetic" / "ckpt"
    synthetic.parent.mkdir()
    arrays = {"s": np.array([b"ab", b"c"], dtype=object), "w": np.arange(3.0)}
    records = {name: tensor_record(array) for name, array in arrays.items()}
    write_bundle(synthetic, records)
    original = (official_tf / "tf" / "toolbox" / "tool01.index").read_bytes()
    cases = [(real, raw) for raw in spoilt_indexes(original)]
    cases += [(synthetic, raw) for raw in damaged_entries(records)]
    outcomes = {"read": 0, "refused": 0}
    for prefix, raw in cases:
        Path(f"{prefix}.index").write_bytes(raw)
        try:
            read_bundle(prefix)
            outcomes["read"] += 1
        except TTSRError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(prefix)), str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > len(cases) // 2 and outcomes["read"] > 0
