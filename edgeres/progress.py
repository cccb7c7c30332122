"""A small progress bar for long work (training, calibration, builds, benchmarks), written to stderr.

On a terminal it redraws one line; elsewhere (CI logs) it prints at most one line every few seconds and the
final line, so logs stay short. ``quiet=True`` silences it.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Progress of ``total`` units of work, e.g. ``Progress(512, "calibrate", unit="img")``."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", quiet: bool = False,
                 stream: TextIO | None = None, log_interval_s: float = 5.0) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._interval = 0.1 if self._is_tty() else log_interval_s

    def _is_tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rate(self) -> float:
        """Units per second so far."""
        elapsed = time.perf_counter() - self._start
        return self.count / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` units and set the values shown after the bar (loss=..., acc=...)."""
        self.count += n
        self.postfix.update(postfix)
        now = time.perf_counter()
        if now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw(final=False)

    def close(self) -> None:
        """Draw the final state once."""
        if self._last_draw >= 0:
            self._draw(final=True)
            self._last_draw = -1.0

    def line(self) -> str:
        elapsed = time.perf_counter() - self._start
        if self.total:
            frac = min(1.0, self.count / self.total)
            filled = int(frac * 20)
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {self.count}/{self.total}"
        else:
            bar = f"{self.count}"
        extras = " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        return f"{self.desc} {bar} {self.rate:.1f} {self.unit}/s {elapsed:.1f}s {extras}".rstrip()

    def _draw(self, *, final: bool) -> None:
        if self.quiet:
            return
        if self._is_tty():
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
