"""`train --time`: how many epochs fit a wall-clock budget, and where an epoch that alone would overrun it ends.

Between epochs `plan_epochs` sets the run's length from the epochs timed so far (`costs_ahead`); inside an epoch
`EpochCut` ends it early when needed. The Trainer (fit.py) re-targets the LR schedule to each new end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from resnetlab.engine import distributed as ddp

# An epoch that trains every layer costs about this many times one that trains only the head on a frozen backbone
# (forward only through it; a backward pass costs about two forwards): 4.8 s against 1.6 s for ResNet-18 at 64 px on
# the demo data (fp32, AVX2 EPYC). Staged runs plan their unfrozen epochs with it until the first one is timed.
UNFROZEN_COST = 3.0


def as_time_value(seconds: float) -> str:
    """A --time value at or just above `seconds`, for advice in the log: 40s, 12m, 2.5h."""
    if seconds < 90:
        return f"{math.ceil(seconds / 10) * 10:.0f}s"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60):.0f}m"
    return f"{math.ceil(seconds / 1800) / 2:g}h"


def seconds_per_epoch(epoch_seconds: list[float]) -> float:
    """The expected length of the next epoch of a kind: the mean of those run so far in this process.

    The first epoch of a process (or of a phase) pays one-off costs (kernel selection, allocator warm-up, a new
    optimizer), so once there are later epochs it is left out.
    """
    recent = epoch_seconds[1:] or epoch_seconds
    return sum(recent) / len(recent)


def costs_ahead(timed: list[tuple[str, float]], kinds: list[str]) -> list[float]:
    """Estimated seconds of each epoch ahead, whose phase kinds are `kinds`, from the (kind, seconds) epochs timed."""
    by_kind: dict[str, list[float]] = {}
    for kind, seconds in timed:
        by_kind.setdefault(kind, []).append(seconds)
    cost = {kind: seconds_per_epoch(times) for kind, times in by_kind.items()}
    if "head" in cost:
        cost.setdefault("unfrozen", UNFROZEN_COST * cost["head"])
    fallback = seconds_per_epoch([seconds for _, seconds in timed])
    return [cost.get(kind, fallback) for kind in kinds]


def epochs_that_fit(seconds_left: float, costs: list[float]) -> int:
    """How many of the epochs ahead, costing `costs` seconds each, fit in `seconds_left`."""
    n, total = 0, 0.0
    for cost in costs:
        total += cost
        if total > seconds_left:
            break
        n += 1
    return n


def plan_epochs(done: int, planned: int, seconds_left: float, costs: list[float]) -> int:
    """The run's new length after `done` epochs: as many of the epochs ahead (costing `costs`) as fit.

    Shortening follows the estimate at once (the budget is a promise); lengthening a plan already shortened needs half
    an epoch to spare, so a few percent of timing noise does not flip the end back and forth.
    """
    fits = done + epochs_that_fit(seconds_left, costs)
    if fits <= planned:
        return fits
    spare = seconds_left - costs[0] / 2
    return max(planned, done + epochs_that_fit(spare, costs))


# An epoch is cut only when it would overrun the budget by more than this share of it, so an epoch a little slower
# than planned still ends whole.
CUT_SLACK = 0.05
# Steps timed before the first estimate of an epoch's end.
CUT_FIRST_CHECK = 3
# Epochs estimated at under this share of the budget are never cut: the plan between epochs keeps them within it (the
# demo's 12 s epochs against its 3 minutes). A count of steps was the rule before, and missed slow steps: 15 steps of
# ResNet-50 at batch 16 took 42 s against a 30 s budget.
CUT_MIN_SHARE = 0.1


class EpochCut:
    """`--time` inside an epoch: ends it where the budget runs out, when the epoch alone would overrun the budget.

    The epoch plan (`plan_epochs`) acts between epochs, but one epoch of a large folder on a CPU can outlast the whole
    budget (Ultralytics' `time` stops mid-epoch too). Timed from the end of its first step (which pays one-off costs),
    after CUT_FIRST_CHECK and 10 steps and at a quarter, half and three quarters of the epoch (the same steps on every
    rank, so rank 0's decision is broadcast), the epoch's pace predicts when it ends, validation and saving included.
    When that passes the deadline by more than CUT_SLACK of it, and the epoch takes at least CUT_MIN_SHARE of the
    budget, the epoch is to end at the step where the time runs out, and `end_at(step)` re-targets the LR schedule so
    that it anneals there. Later checks, and the step the epoch was to end at, move that step as the pace settles, or
    lift the cut (`end_at(steps)`).
    """

    def __init__(
        self,
        steps: int,
        deadline: float,
        budget: float,
        tail_seconds: float | None,
        val_steps: int,
        end_at: Callable[[int], None],
        info: ddp.DistInfo,
        device: torch.device,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.steps, self.deadline, self.budget, self.slack = steps, deadline, budget, CUT_SLACK * budget
        self.clock = clock
        self.tail_seconds, self.val_steps, self.end_at = tail_seconds, val_steps, end_at
        self.info, self.device = info, device
        checks = {CUT_FIRST_CHECK, 10, steps // 4, steps // 2, 3 * steps // 4}
        self.checks = {k for k in checks if CUT_FIRST_CHECK <= k < steps}
        self.cut = steps  # the step the epoch ends at
        self.whole_epoch_s: float | None = None  # what the whole epoch would take at the latest pace, tail included
        self.timed = (0, self.clock())  # (steps, time) at the last check: the pace is measured from there

    def __call__(self, done: int) -> bool:
        if done == 1 and self.checks:  # the pace is timed from the end of the first step, which pays one-off costs
            self._sync()
            self.timed = (1, self.clock())
        elif done in self.checks or done == self.cut < self.steps:  # at the cut, the latest pace decides once more
            self._sync()
            now, (done_before, then) = self.clock(), self.timed
            self.timed = (done, now)
            pace = (now - then) / (done - done_before)  # seconds a step
            # Validation runs forward passes only, about a third of a training step's work per batch.
            tail = self.tail_seconds if self.tail_seconds is not None else pace * self.val_steps / 3
            end = now + (self.steps - done) * pace + tail
            self.whole_epoch_s = self.steps * pace + tail
            cut = self.steps
            long = self.whole_epoch_s >= CUT_MIN_SHARE * self.budget
            if (long and end > self.deadline + self.slack) or self.cut < self.steps:
                cut = min(self.steps, done + max(0, int((self.deadline - tail - now) / pace)))
            cut = ddp.broadcast_object(cut, self.info)
            if cut != self.cut:
                self.cut = cut
                self.end_at(cut)
        return done >= self.cut

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # time the steps, not their launches
