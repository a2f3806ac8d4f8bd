"""A cap on what a book may cost, across all its runs, that holds with any number of calls in flight.

Before a call is sent, its worst case (every prompt token at the dearest input rate,
`max_tokens` at the dearest output rate) is reserved against what is left. A call that does
not fit waits for calls in flight to settle and free room; when none is in flight, it is
never sent. The reservation is released when the call's real cost is known, and that cost
is counted instead. A call cut mid-answer keeps its reservation until the provider says
what it billed. So spent + reserved never exceeds the budget, hence neither does spent.
"""
from __future__ import annotations

import asyncio

from infra.errors import BudgetReached


class Budget:
    def __init__(self, limit_usd: float, spent_usd: float):
        self.limit = limit_usd
        self.spent = spent_usd
        self.reserved = 0.0
        self.holding = 0  # calls holding a reservation (counted, not inferred from a float sum)
        self._settled = asyncio.Event()

    @property
    def left(self) -> float:
        return self.limit - self.spent - self.reserved

    async def reserve(self, worst_case_usd: float) -> float:
        """Hold `worst_case_usd` for a call about to be sent, once it fits in what is left;
        BudgetReached when it cannot fit even with no other call in flight."""
        while worst_case_usd > self.left:
            if self.holding == 0:
                self._settled.set()  # the other waiters see it too, and stop
                raise BudgetReached(
                    f"budget reached: ${self.spent:.4f} of ${self.limit:.4f} spent; the next call "
                    f"could cost up to ${worst_case_usd:.4f} and only ${max(0.0, self.left):.4f} is left")
            self._settled.clear()
            await self._settled.wait()
        self.reserved += worst_case_usd
        self.holding += 1
        return worst_case_usd

    def settle(self, reservation: float, cost_usd: float) -> None:
        """The call's real cost is known: count it instead of its reservation."""
        self.reserved -= reservation
        self.holding -= 1
        self.spent += cost_usd
        self._settled.set()

    async def admit(self, recorder, model: str, attempt: int, worst_case_usd: float):
        """Reserve, then record the call pending: (the recorder that settles the reservation
        with the call's cost, the call's handle)."""
        reserved = Reserved(recorder, self, await self.reserve(worst_case_usd))
        return reserved, reserved.begin(model, attempt)


class Reserved:
    """A recorder whose call holds a budget reservation until its cost is recorded."""

    def __init__(self, inner, budget: Budget, reservation: float):
        self.inner, self.budget, self.reservation = inner, budget, reservation
        self.page = inner.page

    def begin(self, model: str, attempt: int) -> int:
        return self.inner.begin(model, attempt)

    def generation(self, handle: int, generation_id: str) -> None:
        self.inner.generation(handle, generation_id)

    def finish(self, handle, status, usage, computed, provider, error, generation_id) -> float:
        cost = self.inner.finish(handle, status, usage, computed, provider, error, generation_id)
        self.budget.settle(self.reservation, cost)
        return cost

    def unresolved(self, handle: int) -> None:
        """Unknown cost: count the worst case as spent, so the budget still holds."""
        self.inner.unresolved(handle)
        self.budget.settle(self.reservation, self.reservation)


class NotYet(Exception):
    """A call the fleet's ledger cannot admit yet (the budgets are held by calls in flight, or
    the rate limit's tokens are out): ask again in `seconds`."""

    def __init__(self, seconds: float):
        super().__init__(f"not yet: {seconds:.3f} s")
        self.seconds = seconds


class LedgerBudget:
    """The fleet's budgets and rate limit, kept in PostgreSQL (infra/pg_ledger.py): a call is
    admitted by one transaction of the ledger (recorded pending, its worst case reserved
    against every budget it falls under, a rate token taken) and settled by another, when its
    cost is recorded (PgLedger.finish_call). Nothing is held in this process: a cut call
    keeps its reservation in the database until the provider says what it billed."""

    async def admit(self, recorder, model: str, attempt: int, worst_case_usd: float):
        while True:
            try:
                return recorder, recorder.begin(model, attempt, reserve_usd=worst_case_usd)
            except NotYet as wait:
                await asyncio.sleep(wait.seconds)


def book_budget(ledger, given_usd: float | None, default_usd: float | None) -> float | None:
    """The book's cap: the one given now (kept in the ledger for the runs after), else the
    one kept from an earlier run, else the configured default; None: no cap."""
    if given_usd is not None:
        ledger.set_meta("budget_usd", repr(given_usd))
        return given_usd
    return kept_budget(ledger, default_usd)


def kept_budget(ledger, default_usd: float | None) -> float | None:
    """The cap an earlier run kept in the ledger (None: no ledger yet), else the default."""
    kept = ledger.get_meta("budget_usd") if ledger is not None else None
    return float(kept) if kept is not None else default_usd
