"""Session (node/session.py): ordered output through reply slots."""

from __future__ import annotations

from node.session import Session


def make() -> tuple[Session, list[bytes], list[int]]:
    written: list[bytes] = []
    flushes: list[int] = []
    s = Session(1, written.append)
    s.flush = lambda: flushes.append(len(written))
    return s, written, flushes


def test_replies_leave_in_request_order_whatever_order_slots_fill_in() -> None:
    s, written, _ = make()
    a, b = s.reserve(), s.reserve()
    s.send(b"after")
    s.fill(b, b"B")
    assert written == []  # waits behind a
    s.fill(a, b"A")
    assert written == [b"A", b"B", b"after"]
    s.send(b"now")
    assert written[-1] == b"now"


def test_flush_once_every_awaited_reply_is_known() -> None:
    s, written, flushes = make()
    a, b = s.reserve(), s.reserve()
    s.fill(a, b"A")
    assert written == [b"A"] and flushes == []  # b is still unknown: keep gathering
    s.fill(b, b"B")
    assert flushes == [2]  # both written, then sent at once


def test_empty_fill_writes_nothing_and_no_flush_hook_is_fine() -> None:
    written: list[bytes] = []
    s = Session(1, written.append)
    slot = s.reserve()
    s.send(b"x")
    s.fill(slot, b"")
    assert written == [b"x"]


def test_closed_session_writes_nothing() -> None:
    s, written, _ = make()
    slot = s.reserve()
    s.closed = True
    s.fill(slot, b"A")
    assert written == []
