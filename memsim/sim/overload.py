"""Is a serving run overloaded? A verdict from what the simulation saw, not from a formula.

A server keeps up when requests leave about as fast as they arrive: the queue of requests waiting
for admission stays bounded, and after the last arrival only the requests in flight remain. When
arrivals exceed capacity the queue grows for as long as requests arrive, so at the last arrival a
backlog proportional to the trace is still waiting, and requests complete more slowly than they
came. Both must hold: a short trace drains its in-flight requests after the last arrival even when
the server keeps up (completions lag arrivals by one latency), and a burst can queue briefly.
Offline batches (every request at one instant) have no arrival rate, so no verdict.
"""

from __future__ import annotations

from memsim import units

RATE_MARGIN = 0.9  # completions below 90% of the offered rate while requests arrive
BACKLOG_SHARE = 0.05  # and more than 5% of the trace still waiting at the last arrival


def overload_verdict(requests: int, first_arrival_s: float, last_arrival_s: float,
                     completed_by_last: int, waiting_at_last: int, preemptions: int) -> tuple[bool, str]:
    """(overloaded, reason) from the arrival window [first, last] and the queue at its end."""
    span = last_arrival_s - first_arrival_s
    if requests < 2 or span <= 0:
        return False, "every request arrives at once (offline batch): no arrival rate to compare"
    offered = (requests - 1) / span
    done = completed_by_last / span
    backlog = waiting_at_last > max(1, BACKLOG_SHARE * requests)
    figures = (f"{offered:.3g} req/s offered, {done:.3g} req/s completed while requests arrived; "
               f"{waiting_at_last} of {requests} requests still waiting for admission at the last "
               f"arrival (t={units.fmt_time(last_arrival_s)}); {preemptions} preemptions")
    if done < RATE_MARGIN * offered and backlog:
        return True, figures
    return False, "completions keep up with arrivals: " + figures
