"""A cap on what a book may cost, across all its runs, that holds with any number of calls in flight.

Before a call is sent, its worst case (every prompt token at the dearest input rate,
`max_tokens` at the dearest output rate) is reserved against what is left. A call that does
not fit waits for calls in flight to settle and free room; when none is in flight, it is
never sent. The reservation is released when the call's real cost is known, and that cost
is counted instead. A call cut mid-answer keeps its reservation until the provider says
what it billed. So spent + reserved never exceeds the budget, hence neither does spent.

A call may fall under several caps (its book's, the library's: infra/library_budget.py); each
is a `Cap`, and the client reserves against every one of them before sending.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from infra.errors import BudgetReached


class Cap(Protocol):
    """What the client needs of a cap: reserve a call's worst case before it is sent (waiting
    for room, or BudgetReached), learn its ledger row once it is pending, settle its cost."""

    async def reserve(self, worst_case_usd: float): ...  # -> a token for the calls below
    def started(self, token, call_id: int) -> None: ...  # the call is pending in its book's ledger
    def settle(self, token, cost_usd: float) -> None: ...
    def unknown(self, token) -> None: ...  # its cost is known only later: the worst case stays held
    def release(self, token) -> None: ...  # never sent


class Budget:
    """One book's cap, within one run (the spent figure comes from the book's ledger)."""

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

    def started(self, reservation: float, call_id: int) -> None:
        """Nothing to note: the book's ledger is this cap's record."""

    def unknown(self, reservation: float) -> None:
        self.settle(reservation, reservation)

    def release(self, reservation: float) -> None:
        self.settle(reservation, 0.0)


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
