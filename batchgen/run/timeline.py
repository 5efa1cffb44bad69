"""Rows finished over time, kept small: the node's engines are compared on it (which rows/s they reached
once all of them were generating), and so are runs whose engines start one after another.

Points are (epoch seconds, cumulative rows), about one a second; when MAX_POINTS are held, every other
point is dropped and the interval doubles, so an hours-long run keeps the whole curve in a few KiB.
"""

from __future__ import annotations

import time

MAX_POINTS = 600


class Timeline:
    def __init__(self, every: float = 1.0, max_points: int = MAX_POINTS):
        self.every, self.max_points = every, max_points
        self._points: list[tuple[float, int]] = []
        self._last: tuple[float, int] | None = None  # the latest note, kept or not: the run's last result
        self._next = 0.0

    def note(self, rows: int, now: float | None = None) -> None:
        """`rows` finished so far (cumulative). Cheap when no point is due: one comparison."""
        now = time.time() if now is None else now
        self._last = (round(now, 2), rows)
        if now < self._next:
            return
        self._points.append(self._last)
        self._next = now + self.every
        if len(self._points) >= self.max_points:
            self._points = self._points[::2]
            self.every *= 2

    def points(self) -> list[tuple[float, int]]:
        """Every point kept, ending with the latest note (when the last rows finished)."""
        out = list(self._points)
        if self._last is not None and (not out or out[-1] != self._last):
            out.append(self._last)
        return out
