"""Time left in a long run of folds (a cross-validation, a comparison of backbones), from the folds timed so far.

The estimate uses the folds trained in this call at the current configuration's pace (a larger backbone trains
slower than the one before it); folds found finished and reused take no time and are only counted as done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def duration_words(seconds: float) -> str:
    """ "45 s", "3 min", "1 h 05 min": rounded to what a reader plans with."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class FoldClock:
    """Counts finished folds out of `total` and estimates the time the rest will take."""

    total: int
    done: int = 0
    paces: dict[str, list[float]] = field(default_factory=dict)  # configuration -> wall seconds of its trained folds
    started: float = field(default_factory=time.perf_counter)

    def fold_finished(self, configuration: str, seconds: float, reused: bool) -> str:
        """Record one fold of `configuration` (`reused`: found finished); a line: folds done, time left."""
        self.done += 1
        if not reused:
            self.paces.setdefault(configuration, []).append(seconds)
        left = self.total - self.done
        where = f"{self.done}/{self.total} folds done"
        if left <= 0:
            return f"{where} in {duration_words(time.perf_counter() - self.started)}"
        pace = self.paces.get(configuration) or [s for times in self.paces.values() for s in times]
        if not pace:
            return where
        return f"{where}, about {duration_words(left * sum(pace) / len(pace))} left"
