"""Worker output handling and GPU pinning: long lines, non-blocking writes, CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest

from fastvlm_engine.cluster.endpoint import Device
from fastvlm_engine.supervisor.inventory import visible_indices
from fastvlm_engine.supervisor.logpump import LineSplitter, LogWriter, pump_lines


def test_lines_longer_than_the_stream_reader_limit_are_cut_not_fatal():
    splitter = LineSplitter(max_bytes=100)
    lines = splitter.feed(b"short\n" + b"x" * 200_000 + b"\nafter\n")
    assert lines[0] == "short" and lines[2] == "after"
    assert lines[1].startswith("x" * 100) and "199900 more bytes cut" in lines[1]


def test_lines_split_across_chunks_are_joined():
    splitter = LineSplitter()
    assert splitter.feed(b"hel") == []
    assert splitter.feed(b"lo\nwor") == ["hello"]
    assert splitter.feed(b"ld") == []
    assert splitter.flush() == ["world"]


def test_the_pump_survives_a_line_over_64_kib():
    async def run() -> list[str]:
        reader = asyncio.StreamReader()  # the default 64 KiB limit made readline() give up
        reader.feed_data(b'{"level": "INFO"}\n' + b"y" * (70 * 1024) + b"\nlast line\n")
        reader.feed_eof()
        lines: list[str] = []
        await pump_lines(reader, lines.append)
        return lines

    lines = asyncio.run(run())
    assert len(lines) == 3 and lines[-1] == "last line" and lines[1].startswith("yyyy")


class _Blocked(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, text: str) -> int:
        self.gate.wait(10)
        return super().write(text)


def test_writing_never_blocks_the_caller_even_when_the_output_is_stuck():
    stream = _Blocked()
    writer = LogWriter(stream, capacity=5)
    for i in range(100):  # the stream is stuck: every write must return at once
        writer.write(f"line {i}")
    assert writer.dropped >= 90
    stream.gate.set()
    writer.close()
    assert "dropped: output too slow" in stream.getvalue()


UUIDS = ["GPU-aaaa-0", "GPU-bbbb-1", "GPU-cccc-2", "GPU-dddd-3"]


@pytest.mark.parametrize(("setting", "expected"), [
    (None, None),                  # unset: every GPU
    ("", []),                      # set but empty: none
    ("2,3", [2, 3]),
    ("3,1", [3, 1]),
    ("GPU-cccc", [2]),             # a unique UUID prefix
    ("1,7,2", [1]),                # CUDA stops at the first entry naming no device
    ("-1", []),
    ("0,0", [0]),
])
def test_an_inherited_cuda_visible_devices_is_respected(setting, expected):
    assert visible_indices(setting, UUIDS) == expected


def test_workers_are_pinned_by_uuid_in_pci_bus_order():
    env = Device(gpu=2).worker_env("GPU-cccc-2")
    assert env == {"CUDA_VISIBLE_DEVICES": "GPU-cccc-2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert Device().worker_env("") == {"CUDA_VISIBLE_DEVICES": ""}
    assert Device(gpu=0, simulated=True).worker_env("")["CUDA_VISIBLE_DEVICES"] == ""
