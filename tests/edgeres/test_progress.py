"""Tests of edgeres.progress on a virtual clock: the final line's counts, rate and values; quiet means silent."""
from __future__ import annotations

import io
import re

import pytest

from edgeres import progress
from edgeres.progress import Progress
from helpers.clocks import VirtualClock


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    fake = VirtualClock(start=1000.0)
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def test_final_line_to_a_log_stream_has_counts_rate_and_values(clock: VirtualClock) -> None:
    stream = io.StringIO()
    with Progress(40, "epoch 1/3", unit="img", stream=stream) as bar:
        for _ in range(4):
            clock.now += 0.5
            bar.update(10, loss=0.123456, acc=0.5)
    lines = stream.getvalue().splitlines()
    final = lines[-1]
    # 40 images in 2.0 s on the virtual clock: 20.0 img/s
    assert re.fullmatch(r"epoch 1/3 \[#{20}\] 40/40 20\.0 img/s 2\.0s loss=0\.1235 acc=0\.5", final), final
    # not a tty: at most one line per log interval (5 s) plus the final one
    assert len(lines) <= 2


def test_log_stream_prints_again_after_the_interval(clock: VirtualClock) -> None:
    stream = io.StringIO()
    bar = Progress(100, "calibrate", unit="img", stream=stream, log_interval_s=5.0)
    for _ in range(100):
        clock.now += 0.25  # 25 s in total: about one line every 5 s
        bar.update(1)
    bar.close()
    bar.close()  # a second close draws nothing more
    lines = stream.getvalue().splitlines()
    assert 4 <= len(lines) <= 7
    assert all("\r" not in line and "\033" not in line for line in lines)
    assert lines[-1].startswith("calibrate [####################] 100/100 4.0 img/s 25.0s")
    assert sum("100/100" in line for line in lines) == 1


def test_partial_progress_and_unknown_total(clock: VirtualClock) -> None:
    stream = io.StringIO()
    with Progress(8, "load", unit="img", stream=stream) as bar:
        clock.now += 1.0
        bar.update(2)
    assert stream.getvalue().splitlines()[-1] == "load [#####...............] 2/8 2.0 img/s 1.0s"
    stream = io.StringIO()
    with Progress(None, "bench", unit="call", stream=stream) as bar:
        clock.now += 2.0
        bar.update(7)
    assert stream.getvalue().splitlines()[-1] == "bench 7 3.5 call/s 2.0s"


def test_quiet_prints_nothing(clock: VirtualClock) -> None:
    stream = io.StringIO()
    with Progress(10, "epoch", unit="img", stream=stream, quiet=True) as bar:
        for _ in range(10):
            clock.now += 10.0
            bar.update(1, loss=1.0)
    assert stream.getvalue() == ""
    assert bar.count == 10 and bar.rate == pytest.approx(0.1)


def test_tty_redraws_one_line_and_ends_it(clock: VirtualClock) -> None:
    stream = TtyStream()
    with Progress(3, "build", stream=stream) as bar:
        for _ in range(3):
            clock.now += 1.0
            bar.update(1)
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r\033[K") == 4  # three redraws and the final line
    assert text.rsplit("\r\033[K", 1)[-1] == "build [####################] 3/3 1.0 it/s 3.0s\n"


def test_defaults_to_stderr(capsys: pytest.CaptureFixture[str], clock: VirtualClock) -> None:
    with Progress(1, "x", unit="img") as bar:
        clock.now += 1.0
        bar.update(1)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1] == "x [####################] 1/1 1.0 img/s 1.0s"
