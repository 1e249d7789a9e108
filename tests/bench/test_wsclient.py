"""The load client's frame reader (bench/wsclient.py): server frames cut out of reads of any size, of
every length encoding, in order, and nothing taken before it is complete."""

from __future__ import annotations

import numpy as np

from bench.wsclient import FrameBuffer


def server_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One final, unmasked frame, as a server sends it (RFC 6455, 5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def test_frames_split_across_reads_come_out_whole_and_in_order() -> None:
    rng = np.random.default_rng(3)
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000, *rng.integers(0, 300, 40).tolist()]
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    wire = b"".join(server_frame(p, 0x1 if k % 2 else 0x2) for k, p in enumerate(payloads))
    cuts = np.sort(rng.choice(np.arange(1, len(wire)), 120, replace=False)).tolist()
    buffer, got = FrameBuffer(), []
    for start, stop in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        buffer.feed(wire[start:stop])
        got.extend(buffer)
    assert [p for _, p in got] == payloads
    assert [first for first, _ in got] == [0x81 if k % 2 else 0x82 for k in range(len(payloads))]


def test_a_byte_at_a_time_gives_each_frame_once_it_is_complete() -> None:
    frames = [server_frame(b"x" * n) for n in (3, 130, 0)]
    buffer, seen = FrameBuffer(), []
    for k, byte in enumerate(b"".join(frames)):
        buffer.feed(bytes((byte,)))
        seen.extend((k, p) for _, p in buffer)
    ends = np.cumsum([len(f) for f in frames]) - 1
    assert seen == [(int(e), b"x" * n) for e, n in zip(ends, (3, 130, 0), strict=True)]
