"""The rate an attempt measures: from its first report (set-up excluded), over a window."""

from __future__ import annotations

from pda.eta import RateMeter, eta_seconds


def test_the_rate_starts_at_the_first_report_and_follows_the_recent_window():
    m = RateMeter(window=10.0)
    assert m.add(0, now=100.0) is None  # one report: no rate yet (set-up is not counted)
    assert m.add(20, now=102.0) == 10.0
    for t in range(3, 31):  # then the machine slows to 2 passes/s
        rate = m.add(20 + 2 * (t - 2), now=100.0 + t)
    assert 2.0 <= rate < 2.5  # the old fast seconds have left the window


def test_the_eta_is_the_remaining_passes_at_the_rate_less_the_time_since_the_report():
    assert eta_seconds(100, 10.0) == 10.0
    assert eta_seconds(100, 10.0, since_report=4.0) == 6.0
    assert eta_seconds(10, 10.0, since_report=5.0) == 0.0
    assert eta_seconds(100, None) is None and eta_seconds(100, 0.0) is None
