"""Batch MinHash signatures, bit-identical to ``datasketch.MinHash`` (``affine32``, ``zlib.crc32``).

One compiled pass (numba) over all character 5-gram shingles of a batch replaces a
``MinHash.update_batch`` per pair: per shingle ``crc32`` of its UTF-8 bytes, MurmurHash3's
32-bit finaliser, then ``a * h + b`` (mod 2**32) per permutation, minimum over the shingles.
A duplicate shingle does not change a minimum, so the shingles need not be a set.
ASCII texts are hashed from their bytes directly; other texts hash their shingles in Python.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numba
import numpy as np

MAX_HASH = np.uint32(0xFFFFFFFF)


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        table[byte] = crc
    return table


_CRC_TABLE = _crc_table()


@numba.njit(cache=True, nogil=True)
def _ascii_shingle_hashes(data: np.ndarray, offsets: np.ndarray, size: int, table: np.ndarray) -> tuple:
    """crc32 of every ``size``-byte window of each text (the whole text if shorter; none if empty)."""
    n = offsets.shape[0] - 1
    counts = np.zeros(n + 1, dtype=np.int64)
    for row in range(n):
        length = offsets[row + 1] - offsets[row]
        counts[row + 1] = counts[row] + (0 if length == 0 else max(1, length - size + 1))
    hashes = np.empty(counts[n], dtype=np.uint32)
    for row in range(n):
        start = offsets[row]
        length = offsets[row + 1] - start
        width = min(size, length)
        out = counts[row]
        for w in range(counts[row + 1] - counts[row]):
            crc = np.uint32(0xFFFFFFFF)
            for k in range(start + w, start + w + width):
                crc = table[(crc ^ data[k]) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
            hashes[out + w] = crc ^ np.uint32(0xFFFFFFFF)
    return hashes, counts


@numba.njit(cache=True, nogil=True)
def _signatures(hashes: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = counts.shape[0] - 1
    perms = a.shape[0]
    mask = np.uint64(0xFFFFFFFF)
    out = np.full((n, perms), np.uint64(0xFFFFFFFF), dtype=np.uint64)
    mixed = np.empty(perms, dtype=np.uint32)
    for row in range(n):
        mixed[:] = np.uint32(0xFFFFFFFF)
        for i in range(counts[row], counts[row + 1]):
            h = np.uint64(hashes[i])
            h ^= h >> np.uint64(16)
            h = (h * np.uint64(0x85EBCA6B)) & mask
            h ^= h >> np.uint64(13)
            h = (h * np.uint64(0xC2B2AE35)) & mask
            h ^= h >> np.uint64(16)
            h32 = np.uint32(h)
            for k in range(perms):  # 32-bit multiply-add (wraps like datasketch's uint32 arrays)
                mixed[k] = min(mixed[k], np.uint32(a[k] * h32 + b[k]))
        for k in range(perms):
            out[row, k] = mixed[k]
    return out


def batch_signatures(texts: Sequence[str], permutations: np.ndarray, size: int) -> np.ndarray:
    """``(len(texts), num_perm)`` uint64 MinHash values of each normalised text's ``size``-char shingles.

    ``permutations`` is datasketch's ``(2, num_perm)`` affine32 ``(a, b)``.
    """
    a = np.ascontiguousarray(permutations[0], dtype=np.uint32)
    b = np.ascontiguousarray(permutations[1], dtype=np.uint32)
    ascii_rows = [i for i, text in enumerate(texts) if text.isascii()]
    if len(ascii_rows) == len(texts):
        return _ascii_signatures(texts, a, b, size)
    out = np.empty((len(texts), len(a)), dtype=np.uint64)
    if ascii_rows:
        out[ascii_rows] = _ascii_signatures([texts[i] for i in ascii_rows], a, b, size)
    others = [i for i, text in enumerate(texts) if not text.isascii()]
    parts: list[np.ndarray] = []
    counts = np.zeros(len(others) + 1, dtype=np.int64)
    for row, i in enumerate(others):
        text = texts[i]
        grams = [text[k : k + size] for k in range(len(text) - size + 1)] if len(text) > size else [text]
        parts.append(np.fromiter((zlib.crc32(g.encode("utf-8")) for g in grams), dtype=np.uint32, count=len(grams)))
        counts[row + 1] = counts[row] + len(grams)
    out[others] = _signatures(np.concatenate(parts), counts, a, b)
    return out


def _ascii_signatures(texts: Sequence[str], a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    encoded = [text.encode("ascii") for text in texts]
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    hashes, counts = _ascii_shingle_hashes(data, offsets, size, _CRC_TABLE)
    return _signatures(hashes, counts, a, b)
