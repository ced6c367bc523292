"""Time left in a long run of folds."""

from __future__ import annotations

from plantlib.experiments.eta import FoldClock, duration_words


def test_time_left_follows_the_current_configurations_pace_and_skips_reused_folds() -> None:
    clock = FoldClock(total=6)
    assert clock.fold_finished("small", 0.0, reused=True) == "1/6 folds done"  # nothing timed yet
    assert clock.fold_finished("small", 10.0, reused=False) == "2/6 folds done, about 40 s left"
    assert clock.fold_finished("large", 30.0, reused=False) == "3/6 folds done, about 2 min left"  # large's own pace
    assert clock.fold_finished("other", 20.0, reused=True).endswith("about 40 s left")  # no pace: all timed folds
    clock.fold_finished("large", 30.0, reused=False)
    assert clock.fold_finished("large", 30.0, reused=False).startswith("6/6 folds done in ")


def test_durations_read_as_a_planner_would_say_them() -> None:
    assert [duration_words(s) for s in (-1, 45, 89.4, 150, 3599, 3900)] == [
        "0 s",
        "45 s",
        "89 s",
        "2 min",
        "1 h 00 min",
        "1 h 05 min",
    ]
