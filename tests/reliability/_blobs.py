"""Hand-made hostile blobs: headers with lies and recomputed checksums, zstd bombs, mutations."""

from __future__ import annotations

import random
import struct
import zlib

from hoard.storage._codec import _CRC, _HEADER, FORMAT_VERSION, HEADER_SIZE, MAGIC

ZSTD_MAGIC = 0xFD2FB528
RLE_BLOCK = 1 << 17  # the largest zstd block (128 KiB)


def frame_blob(kind: int, stored: bytes, length: int, *, flags: int = 1, fmt: int = FORMAT_VERSION,
               magic: bytes = MAGIC) -> bytes:
    """A blob with any header fields and a *correct* checksum: only the checks after the checksum
    can refuse it."""
    head = _HEADER.pack(magic, fmt, kind, flags, length)
    return head + _CRC.pack(zlib.crc32(stored, zlib.crc32(head))) + stored


def rle_bomb(size: int, *, declare: int | None = -1) -> bytes:
    """A valid zstd frame that decompresses to `size` zero bytes from ~4 bytes per 128 KiB (RLE
    blocks): 10 GiB from 320 KiB. `declare`: the content size the frame header claims (-1: `size`,
    None: no content size)."""
    declared = size if declare == -1 else declare
    window = bytes([7 << 3])  # window descriptor: 2**(10+7) = 128 KiB
    if declared is None:
        head = struct.pack("<IB", ZSTD_MAGIC, 0x00) + window
    else:
        head = struct.pack("<IB", ZSTD_MAGIC, 0xC0) + window + struct.pack("<Q", declared)  # 8-byte size
    blocks = bytearray()
    left = size
    while left > 0:
        n = min(RLE_BLOCK, left)
        left -= n
        header = (1 if left == 0 else 0) | (1 << 1) | (n << 3)  # last flag, type RLE, size
        blocks += struct.pack("<I", header)[:3] + b"\0"
    return head + bytes(blocks)


def with_length(blob: bytes, length: int) -> bytes:
    """The same blob with its length field rewritten and its checksum recomputed."""
    magic, fmt, kind, flags, _ = _HEADER.unpack_from(blob)
    return frame_blob(kind, blob[HEADER_SIZE:], length, flags=flags, fmt=fmt, magic=magic)


def mutate(rng: random.Random, blob: bytes, *, recompute_crc: bool) -> tuple[str, bytes]:  # noqa: PLR0911 - one return per kind of damage
    """One random mutation of `blob`; returns (its name, the result)."""
    b = bytearray(blob)
    choice = rng.randrange(9 if recompute_crc else 5)
    if choice == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return "bitflip", bytes(b)
    if choice == 1:  # truncation
        return "truncate", bytes(b[: rng.randrange(len(b) + 1)])
    if choice == 2:  # garbage appended
        return "append", bytes(b) + rng.randbytes(rng.randint(1, 64))
    if choice == 3 and b:  # random bytes overwritten
        i = rng.randrange(len(b))
        n = rng.randint(1, 16)
        b[i:i + n] = rng.randbytes(n)
        return "overwrite", bytes(b[: len(blob)])
    if choice == 4:
        return "random", rng.randbytes(rng.randint(0, 2 * len(blob) + 1))
    if len(b) < HEADER_SIZE:
        return "short", bytes(b)
    _magic, fmt, kind, flags, length = _HEADER.unpack_from(b)
    stored = bytes(b[HEADER_SIZE:])
    if choice == 5:  # length-field lies with a valid checksum
        lie = rng.choice([0, 1, length - 1, length + 1, length * 2, 2**31, 2**40, 2**64 - 1,
                          rng.randrange(2**64)])
        return "length-lie", frame_blob(kind, stored, max(0, min(lie, 2**64 - 1)), flags=flags, fmt=fmt)
    if choice == 6:  # valid header, garbage payload (compressed or not)
        junk = rng.randbytes(rng.randint(0, 300))
        return "garbage-payload", frame_blob(kind, junk, rng.choice([len(junk), length, 1000]),
                                             flags=rng.choice([0, 1, flags]))
    if choice == 7:  # flipped payload bits, checksum recomputed (zstd or JSON must refuse them)
        p = bytearray(stored)
        for _ in range(rng.randint(1, 4)):
            if p:
                i = rng.randrange(len(p))
                p[i] ^= 1 << rng.randrange(8)
        return "payload-flip+crc", frame_blob(kind, bytes(p), length, flags=flags, fmt=fmt)
    # header fields: format, kind, flags, with a valid checksum
    return "header-fields", frame_blob(rng.choice([kind, kind ^ 3, 0, 255]), stored, length,
                                       flags=rng.choice([flags, flags ^ 1, 2, 0x80]),
                                       fmt=rng.choice([fmt, fmt + 1, 0, 255]))
