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
                raise BudgetReached(reached("budget reached", self.spent, self.limit, worst_case_usd, self.left))
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


async def admit(recorder, budget, model: str, attempt: int, worst_case_usd: float):
    """Before a call is sent: its worst case reserved against every cap it falls under, then
    the call recorded pending; returns (the recorder that settles the caps with its cost, the
    call's handle). BudgetReached: nothing is sent. The fleet's ledger does both in one
    transaction (LedgerBudget); otherwise the caps are `budget` (the client's, if any) and the
    recorder's own (its book's, the library's), reserved in that order."""
    if isinstance(budget, LedgerBudget):
        return await budget.admit(recorder, model, attempt, worst_case_usd)
    caps = [*([budget] if budget is not None else ()), *getattr(recorder, "budgets", ())]
    if not caps:
        return recorder, recorder.begin(model, attempt)
    reserved = await Reserved.take(recorder, caps, worst_case_usd)
    return reserved, reserved.begin(model, attempt)


class Reserved:
    """A recorder whose call holds a reservation on each of its caps until its cost is recorded."""

    def __init__(self, inner, held: list[tuple[Cap, object]]):
        self.inner, self.held = inner, held
        self.page = inner.page

    @classmethod
    async def take(cls, inner, caps: list[Cap], worst_case_usd: float) -> Reserved:
        """Reserve on every cap, in their fixed order; one that refuses releases the others."""
        held: list[tuple[Cap, object]] = []
        try:
            for cap in caps:
                held.append((cap, await cap.reserve(worst_case_usd)))
        except BaseException:
            for cap, token in held:
                cap.release(token)
            raise
        return cls(inner, held)

    def begin(self, model: str, attempt: int) -> int:
        handle = self.inner.begin(model, attempt)
        for cap, token in self.held:
            cap.started(token, handle)
        return handle

    def generation(self, handle: int, generation_id: str) -> None:
        self.inner.generation(handle, generation_id)

    def finish(self, handle, status, usage, computed, provider, error, generation_id) -> float:
        cost = self.inner.finish(handle, status, usage, computed, provider, error, generation_id)
        for cap, token in self.held:
            cap.settle(token, cost)
        return cost

    def unresolved(self, handle: int) -> None:
        """Unknown cost: the worst case stays counted, so the caps still hold."""
        self.inner.unresolved(handle)
        for cap, token in self.held:
            cap.unknown(token)


def apart(*amounts: float) -> list[str]:
    """`$x` for each amount, with as many decimals (4 to 9) as it takes to tell them apart: a
    refusal never reads as `up to $0.0033 and only $0.0033 is left`."""
    places = next((p for p in range(4, 10) if len({f"{a:.{p}f}" for a in amounts}) == len(set(amounts))), 9)
    return [f"${a:.{places}f}" for a in amounts]


def reached(what: str, spent: float, limit: float, next_call: float, left: float) -> str:
    """`<what>: $spent of $limit spent; the next call could cost up to $x and only $y is left`."""
    cost, room = apart(next_call, max(0.0, left))
    return f"{what}: ${spent:.4f} of ${limit:.4f} spent; the next call could cost up to {cost} and only {room} is left"


class NotYet(Exception):
    """A call the fleet's ledger cannot admit yet (the budgets are held by calls in flight):
    ask again in `seconds`."""

    def __init__(self, seconds: float):
        super().__init__(f"not yet: {seconds:.3f} s")
        self.seconds = seconds


class LedgerBudget:
    """The fleet's budgets and rate limit, kept in PostgreSQL (infra/pg_ledger.py): a call is
    admitted by one transaction of the ledger (recorded pending, its worst case reserved
    against every budget it falls under, its slot of the fleet's rate taken) and settled by
    another, when its cost is recorded (PgLedger.finish_call). Nothing is held in this
    process: a cut call keeps its reservation in the database until the provider says what
    it billed."""

    async def admit(self, recorder, model: str, attempt: int, worst_case_usd: float):
        while True:
            try:
                handle = recorder.begin(model, attempt, reserve_usd=worst_case_usd)
                break
            except NotYet as wait:
                await asyncio.sleep(wait.seconds)
        wait, shift = recorder.ledger.slot_wait(handle)
        while wait > 0:  # the call's slot, moved back by any pause a 429 set meanwhile
            await asyncio.sleep(wait)
            wait, shift = recorder.ledger.pauses_since(shift)
        return recorder, handle

    def pause(self, recorder, seconds: float) -> None:
        """The provider answered 429: no writer of the fleet is admitted a call for `seconds`
        (the recorder's ledger is the fleet's: any book's will do)."""
        recorder.ledger.pause_fleet(seconds)


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
