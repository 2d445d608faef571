"""The sans-IO codec (node/protocol.py): framing, text lines, violations.

The argc/data table below is copied by hand from the reference (§1.3), not
imported from the codec, so a typo in either one shows up here.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import protocol as P
from node.protocol import TEXT, VIOLATION, Decoder, split_admin

pytestmark = pytest.mark.timeout(60)

# type: (argc, data) — reference §1.3 (gearmand libgearman/command.cc).
LAYOUT: dict[int, tuple[int, bool]] = {
    1: (1, False),   # CAN_DO
    2: (1, False),   # CANT_DO
    3: (0, False),   # RESET_ABILITIES
    4: (0, False),   # PRE_SLEEP
    5: (0, False),   # unused
    6: (0, False),   # NOOP
    7: (2, True),    # SUBMIT_JOB
    8: (1, False),   # JOB_CREATED
    9: (0, False),   # GRAB_JOB
    10: (0, False),  # NO_JOB
    11: (2, True),   # JOB_ASSIGN
    12: (3, False),  # WORK_STATUS
    13: (1, True),   # WORK_COMPLETE
    14: (1, False),  # WORK_FAIL
    15: (1, False),  # GET_STATUS
    16: (0, True),   # ECHO_REQ
    17: (0, True),   # ECHO_RES
    18: (2, True),   # SUBMIT_JOB_BG
    19: (2, False),  # ERROR
    20: (5, False),  # STATUS_RES
    21: (2, True),   # SUBMIT_JOB_HIGH
    22: (1, False),  # SET_CLIENT_ID
    23: (2, False),  # CAN_DO_TIMEOUT
    24: (0, False),  # ALL_YOURS
    25: (1, True),   # WORK_EXCEPTION
    26: (1, False),  # OPTION_REQ
    27: (1, False),  # OPTION_RES
    28: (1, True),   # WORK_DATA
    29: (1, True),   # WORK_WARNING
    30: (0, False),  # GRAB_JOB_UNIQ
    31: (3, True),   # JOB_ASSIGN_UNIQ
    32: (2, True),   # SUBMIT_JOB_HIGH_BG
    33: (2, True),   # SUBMIT_JOB_LOW
    34: (2, True),   # SUBMIT_JOB_LOW_BG
    35: (7, True),   # SUBMIT_JOB_SCHED
    36: (3, True),   # SUBMIT_JOB_EPOCH
    37: (4, True),   # SUBMIT_REDUCE_JOB (4, not the 3 PROTOCOL claims)
    38: (4, True),   # SUBMIT_REDUCE_JOB_BACKGROUND
    39: (0, False),  # GRAB_JOB_ALL
    40: (4, True),   # JOB_ASSIGN_ALL
    41: (1, False),  # GET_STATUS_UNIQUE
    42: (6, False),  # STATUS_RES_UNIQUE
}

MISSING_NUL = (VIOLATION, b"INVALID_ARGUMENT", b"Packet is missing a NUL-terminated argument",
               False)
BAD_MAGIC_OPEN = (VIOLATION, b"INVALID_MAGIC", b"Request magic expected", False)


def frame(ptype: int, payload: bytes, magic: bytes = P.REQ) -> bytes:
    return magic + struct.pack(">II", ptype, len(payload)) + payload


def sample(ptype: int, data: bytes = b"da\0ta", rest: bytes = b"re\0st"
           ) -> tuple[bytes, tuple[bytes, ...]]:
    """A payload for ``ptype`` and the args the decoder must produce for it."""
    argc, has_data = LAYOUT[ptype]
    if argc == 0 and not has_data:
        return b"junk\0junk", ()  # read and thrown away
    fixed = [b"arg%d" % i for i in range(argc if has_data else argc - 1)]
    last = data if has_data else rest
    return b"".join(a + b"\0" for a in fixed) + last, (*fixed, last)


def feed_all(chunks: list[bytes], max_packet: int = P.DEFAULT_MAX_PACKET) -> list[tuple]:
    d = Decoder(max_packet)
    events: list[tuple] = []
    for c in chunks:
        events += d.feed(c)
    return events


def closing(events: list[tuple]) -> list[int]:
    return [i for i, ev in enumerate(events) if ev[0] == VIOLATION and ev[3]]


# --------------------------------------------------------------------------- framing


def test_table_covers_every_type() -> None:
    assert sorted(LAYOUT) == list(range(1, 43))


@pytest.mark.parametrize("ptype", range(1, 43))
def test_every_type_frames_with_its_argc_and_data(ptype: int) -> None:
    payload, args = sample(ptype)
    assert Decoder().feed(frame(ptype, payload)) == [(ptype, args)]


@pytest.mark.parametrize("ptype", range(1, 43))
def test_every_type_with_empty_last_field(ptype: int) -> None:
    payload, args = sample(ptype, data=b"", rest=b"")
    assert Decoder().feed(frame(ptype, payload)) == [(ptype, args)]


@pytest.mark.parametrize("ptype", [t for t, (argc, data) in LAYOUT.items()
                                   if (argc if data else argc - 1) > 0])
def test_missing_nul_is_reported_and_never_eats_the_next_packet(ptype: int) -> None:
    # Drop the last NUL-terminated argument's NUL: one NUL short inside `size`.
    argc, has_data = LAYOUT[ptype]
    fixed = argc if has_data else argc - 1
    short = b"\0".join(b"arg%d" % i for i in range(fixed))  # fixed-1 NULs, no data
    stream = frame(ptype, short) + frame(P.ECHO_REQ, b"next")
    assert Decoder().feed(stream) == [MISSING_NUL, (P.ECHO_REQ, (b"next",))]


def test_submit_with_size_one_does_not_stall_or_swallow_the_echo() -> None:
    # Reference §1.3: gearmand scans past `size` and eats the ECHO that follows.
    stream = frame(P.SUBMIT_JOB, b"f") + frame(P.ECHO_REQ, b"ping")
    assert Decoder().feed(stream) == [MISSING_NUL, (P.ECHO_REQ, (b"ping",))]


def test_reduce_takes_four_nul_terminated_args() -> None:
    payload = b"f\0u\0red\0agg\0da\0ta"
    for ptype in (P.SUBMIT_REDUCE_JOB, P.SUBMIT_REDUCE_JOB_BACKGROUND):
        assert Decoder().feed(frame(ptype, payload)) == [
            (ptype, (b"f", b"u", b"red", b"agg", b"da\0ta"))]


def test_reduce_with_three_args_is_short_not_a_hang() -> None:
    stream = frame(P.SUBMIT_REDUCE_JOB, b"f\0u\0red\0data") + frame(P.ECHO_REQ, b"x")
    assert Decoder().feed(stream) == [MISSING_NUL, (P.ECHO_REQ, (b"x",))]


def test_nuls_in_rest_argument_are_kept() -> None:
    d = Decoder()
    assert d.feed(frame(P.CAN_DO, b"a\0b")) == [(P.CAN_DO, (b"a\0b",))]
    assert d.feed(frame(P.GET_STATUS, b"H:vm:1\0junk")) == [(P.GET_STATUS, (b"H:vm:1\0junk",))]
    assert d.feed(frame(P.OPTION_REQ, b"exceptions\0x")) == [(P.OPTION_REQ, (b"exceptions\0x",))]
    assert d.feed(frame(P.WORK_STATUS, b"H:1\x0050\x00100\x00x")) == [
        (P.WORK_STATUS, (b"H:1", b"50", b"100\0x"))]


def test_argless_type_discards_payload() -> None:
    # [OBS] GRAB_JOB with 5 junk bytes is a normal GRAB_JOB.
    assert Decoder().feed(frame(P.GRAB_JOB, b"junk!")) == [(P.GRAB_JOB, ())]


def test_echo_data_is_opaque() -> None:
    assert Decoder().feed(frame(P.ECHO_REQ, b"")) == [(P.ECHO_REQ, (b"",))]
    assert Decoder().feed(frame(P.ECHO_REQ, b"\0\0\n\r")) == [(P.ECHO_REQ, (b"\0\0\n\r",))]


def test_large_data_blob_is_fine() -> None:
    blob = bytes(range(256)) * 400  # 100 kB, NULs included
    assert Decoder().feed(frame(P.SUBMIT_JOB, b"f\0u\0" + blob)) == [
        (P.SUBMIT_JOB, (b"f", b"u", blob))]


def test_request_encoder_matches_wire_layout() -> None:
    assert P.request(P.SUBMIT_JOB, b"f", b"u", b"x") == (
        b"\0REQ\x00\x00\x00\x07\x00\x00\x00\x05f\0u\0x")
    assert P.packet(P.JOB_CREATED, b"H:vm:1") == b"\0RES\x00\x00\x00\x08\x00\x00\x00\x06H:vm:1"
    assert P.packet_args(P.ERROR, b"A", b"b c") == b"\0RES\x00\x00\x00\x13\x00\x00\x00\x05A\0b c"
    assert P.error_packet(b"QUEUE_ERROR", b"Job queue is full") == (
        b"\0RES\x00\x00\x00\x13\x00\x00\x00\x1dQUEUE_ERROR\0Job queue is full")
    assert P.NOOP_PACKET == b"\0RES\x00\x00\x00\x06\x00\x00\x00\x00"
    assert P.NO_JOB_PACKET == b"\0RES\x00\x00\x00\x0a\x00\x00\x00\x00"
    assert P.ERR_INVALID_COMMAND == (
        b"\0RES\x00\x00\x00\x13\x00\x00\x00\x24INVALID_COMMAND\0Command not expected")


# --------------------------------------------------------------------------- argument limits


def test_argument_of_8180_bytes_is_accepted() -> None:
    name = b"f" * 8180
    assert Decoder().feed(frame(P.SUBMIT_JOB, name + b"\0u\0d")) == [
        (P.SUBMIT_JOB, (name, b"u", b"d"))]
    assert Decoder().feed(frame(P.CAN_DO, name)) == [(P.CAN_DO, (name,))]


def test_nul_terminated_argument_of_8200_bytes_closes() -> None:
    d = Decoder()
    events = d.feed(frame(P.SUBMIT_JOB, b"f" * 8200 + b"\0u\0d") + frame(P.ECHO_REQ, b"x"))
    assert len(events) == 1
    assert events[0][:2] == (VIOLATION, b"ARGUMENT_TOO_LARGE") and events[0][3] is True
    assert d.feed(frame(P.ECHO_REQ, b"x")) == []


def test_rest_argument_of_9000_bytes_closes() -> None:
    events = Decoder().feed(frame(P.CAN_DO, b"f" * 9000))
    assert len(events) == 1
    assert events[0][:2] == (VIOLATION, b"ARGUMENT_TOO_LARGE") and events[0][3] is True


def test_packet_over_max_packet_closes_on_the_header_alone() -> None:
    d = Decoder(max_packet=100)
    head = struct.pack(">4sII", P.REQ, P.ECHO_REQ, 101)
    events = d.feed(head)  # no need to wait for 101 bytes that will never be accepted
    assert len(events) == 1
    assert events[0][:2] == (VIOLATION, b"ARGUMENT_TOO_LARGE") and events[0][3] is True
    assert d.feed(b"x" * 101 + frame(P.ECHO_REQ, b"x")) == []


def test_packet_at_max_packet_is_accepted() -> None:
    d = Decoder(max_packet=100)
    assert d.feed(frame(P.ECHO_REQ, b"x" * 100)) == [(P.ECHO_REQ, (b"x" * 100,))]


# --------------------------------------------------------------------------- bad headers


@pytest.mark.parametrize("magic", [b"\0REX", b"\0req", b"\0\0\0\0", b"\0RE\0"])
def test_bad_magic_closes(magic: bytes) -> None:
    d = Decoder()
    events = d.feed(frame(P.ECHO_REQ, b"x", magic) + frame(P.ECHO_REQ, b"y"))
    assert len(events) == 1
    assert events[0][:2] == (VIOLATION, b"INVALID_MAGIC") and events[0][3] is True
    assert d.feed(frame(P.ECHO_REQ, b"z")) == []
    assert d.feed(b"version\n") == []


@pytest.mark.parametrize("ptype", [0, 43, 44, 255, 0x7FFFFFFF, 0xFFFFFFFF])
def test_type_zero_or_over_42_closes(ptype: int) -> None:
    d = Decoder()
    events = d.feed(frame(ptype, b"") + frame(P.ECHO_REQ, b"y"))
    assert len(events) == 1
    assert events[0][:2] == (VIOLATION, b"INVALID_COMMAND") and events[0][3] is True
    assert d.feed(frame(P.ECHO_REQ, b"z")) == []


@pytest.mark.parametrize("ptype", [P.ECHO_REQ, P.JOB_CREATED, P.SUBMIT_JOB, 1, 42])
def test_res_magic_with_valid_type_is_an_error_that_keeps_the_connection(ptype: int) -> None:
    payload, _ = sample(ptype)
    d = Decoder()
    stream = frame(ptype, payload, P.RES) + frame(P.ECHO_REQ, b"after")
    assert d.feed(stream) == [BAD_MAGIC_OPEN, (P.ECHO_REQ, (b"after",))]


def test_res_magic_packet_split_keeps_framing() -> None:
    stream = frame(P.ECHO_REQ, b"0123456789", P.RES) + frame(P.ECHO_REQ, b"after")
    for cut in range(len(stream) + 1):
        assert feed_all([stream[:cut], stream[cut:]]) == [
            BAD_MAGIC_OPEN, (P.ECHO_REQ, (b"after",))], cut


@pytest.mark.parametrize("ptype", [0, 43])
def test_res_magic_with_invalid_type_closes(ptype: int) -> None:
    events = Decoder().feed(frame(ptype, b"", P.RES) + frame(P.ECHO_REQ, b"y"))
    assert len(events) == 1 and events[0][0] == VIOLATION and events[0][3] is True


def test_short_header_waits() -> None:
    d = Decoder()
    whole = frame(P.ECHO_REQ, b"abc")
    for i in range(len(whole) - 1):
        assert d.feed(whole[i:i + 1]) == []
    assert d.feed(whole[-1:]) == [(P.ECHO_REQ, (b"abc",))]


# --------------------------------------------------------------------------- text lines


def test_text_lines_lf_and_crlf() -> None:
    d = Decoder()
    assert d.feed(b"version\n") == [(TEXT, b"version")]
    assert d.feed(b"status\r\n") == [(TEXT, b"status")]
    assert d.feed(b"a\r\r\n") == [(TEXT, b"a\r")]  # only one \r is removed
    assert d.feed(b"a\rb\n") == [(TEXT, b"a\rb")]
    assert d.feed(b"x\n") == [(TEXT, b"x")]


def test_empty_lines() -> None:
    # An empty line starts with \n or \r (non-zero), so it is text.
    assert Decoder().feed(b"\n\r\n") == [(TEXT, b""), (TEXT, b"")]


def test_pipelined_lines_come_out_in_order() -> None:
    assert Decoder().feed(b"version\nstatus\r\ngetpid\n") == [
        (TEXT, b"version"), (TEXT, b"status"), (TEXT, b"getpid")]


def test_partial_line_waits_for_newline() -> None:
    d = Decoder()
    assert d.feed(b"ver") == []
    assert d.feed(b"sion\r") == []
    assert d.feed(b"\nsta") == [(TEXT, b"version")]
    assert d.feed(b"tus\n") == [(TEXT, b"status")]


def test_text_and_binary_mix_on_one_connection() -> None:
    stream = (b"version\n" + frame(P.ECHO_REQ, b"e1") + b"status\r\n"
              + frame(P.GRAB_JOB, b"") + b"x\n")
    assert Decoder().feed(stream) == [
        (TEXT, b"version"), (P.ECHO_REQ, (b"e1",)), (TEXT, b"status"), (P.GRAB_JOB, ()),
        (TEXT, b"x")]


def test_line_of_8192_bytes_including_newline_is_accepted() -> None:
    line = b"v" * 8191
    assert Decoder().feed(line + b"\n") == [(TEXT, line)]
    # Same when it trickles in.
    assert feed_all([line[:4000], line[4000:], b"\n"]) == [(TEXT, line)]


def test_line_of_8193_bytes_closes() -> None:
    d = Decoder()
    events = d.feed(b"v" * 8192 + b"\nversion\n")
    assert len(events) == 1
    assert events[0][0] == VIOLATION and events[0][3] is True
    assert d.feed(b"version\n") == []


def test_unterminated_line_closes_once_it_cannot_fit() -> None:
    d = Decoder()
    assert d.feed(b"v" * 8191) == []
    events = d.feed(b"v")
    assert len(events) == 1 and events[0][0] == VIOLATION and events[0][3] is True


def test_text_line_does_not_include_following_binary_packet() -> None:
    # A line is only ever ended by \n; a binary packet after it is framed on its own.
    stream = b"getpid\n" + frame(P.ECHO_REQ, b"a\nb")
    assert Decoder().feed(stream) == [(TEXT, b"getpid"), (P.ECHO_REQ, (b"a\nb",))]


# --------------------------------------------------------------------------- split anywhere

STREAM = b"".join([
    frame(P.CAN_DO, b"reverse"),
    b"status\r\n",
    frame(P.SUBMIT_JOB, b"reverse\0u1\0hello\0world"),
    frame(P.ECHO_REQ, b"x" * 300),
    frame(P.SUBMIT_JOB, b"f"),  # missing NUL
    frame(P.ECHO_REQ, b"p", P.RES),  # wrong magic, keeps framing
    b"version\n",
    frame(P.SUBMIT_REDUCE_JOB, b"f\0u\0r\0a\0d"),
    frame(P.GRAB_JOB_ALL, b""),
    frame(P.WORK_STATUS, b"H:1\0" + b"1\0" + b"2"),
    b"\n",
])


def test_split_at_every_byte_boundary_gives_the_same_events() -> None:
    whole = Decoder().feed(STREAM)
    assert len(whole) == 11 and not closing(whole)
    for cut in range(len(STREAM) + 1):
        assert feed_all([STREAM[:cut], STREAM[cut:]]) == whole, cut


def test_byte_by_byte_gives_the_same_events() -> None:
    whole = Decoder().feed(STREAM)
    assert feed_all([STREAM[i:i + 1] for i in range(len(STREAM))]) == whole


def test_split_three_ways_gives_the_same_events() -> None:
    whole = Decoder().feed(STREAM)
    n = len(STREAM)
    for a in range(0, n + 1, 7):
        for b in range(a, n + 1, 13):
            assert feed_all([STREAM[:a], STREAM[a:b], STREAM[b:]]) == whole, (a, b)


def test_split_at_every_boundary_up_to_a_closing_violation() -> None:
    stream = STREAM + frame(0, b"") + frame(P.ECHO_REQ, b"never")
    whole = Decoder().feed(stream)
    assert closing(whole) == [len(whole) - 1]
    for cut in range(len(stream) + 1):
        assert feed_all([stream[:cut], stream[cut:]]) == whole, cut


# --------------------------------------------------------------------------- properties

_arg = st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"."))


@st.composite
def valid_items(draw: st.DrawFn) -> tuple[bytes, tuple]:
    """One valid request packet or text line, and its expected event."""
    if draw(st.integers(0, 4)) == 0:
        line = draw(st.binary(max_size=20).map(
            lambda b: b"t" + b.replace(b"\n", b" ").replace(b"\0", b" ")))
        line = line.rstrip(b"\r")
        return line + draw(st.sampled_from([b"\n", b"\r\n"])), (TEXT, line)
    ptype = draw(st.integers(1, 42))
    argc, has_data = LAYOUT[ptype]
    if argc == 0 and not has_data:
        return frame(ptype, draw(st.binary(max_size=8))), (ptype, ())
    fixed = [draw(_arg) for _ in range(argc if has_data else argc - 1)]
    last = draw(st.binary(max_size=40))
    payload = b"".join(a + b"\0" for a in fixed) + last
    return frame(ptype, payload), (ptype, (*fixed, last))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def check_invariants(data: bytes, cuts: list[int], max_packet: int) -> list[tuple]:
    whole = Decoder(max_packet).feed(data)
    d = Decoder(max_packet)
    events: list[tuple] = []
    for c in chunked(data, cuts):
        events += d.feed(c)  # must never raise
    assert events == whole
    for ev in events:
        if ev[0] == VIOLATION:
            assert len(ev) == 4 and isinstance(ev[1], bytes) and isinstance(ev[2], bytes)
        elif ev[0] == TEXT:
            assert len(ev) == 2 and b"\n" not in ev[1]
        else:
            assert 1 <= ev[0] <= 42 and all(isinstance(a, bytes) for a in ev[1])
    where = closing(events)
    if where:
        assert where == [len(events) - 1], "events after a closing VIOLATION"
        assert d.feed(frame(P.ECHO_REQ, b"more") + b"version\n") == []
    return events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8),
       max_packet=st.sampled_from([16, 64, P.DEFAULT_MAX_PACKET]))
def test_fuzz_random_bytes_never_raise(data: bytes, cuts: list[int], max_packet: int) -> None:
    check_invariants(data, cuts, max_packet)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.sampled_from([
           b"\0", b"\0REQ", b"\0RES", b"\x00\x00\x00\x10", b"\x00\x00\x00\x07",
           b"\x00\x00\x00\x00", b"\x00\x00\x00\x2b", b"\xff\xff\xff\xff", b"\n", b"\r\n",
           b"x", b"status", b"\x00\x00\x00\x03"]), max_size=40).map(b"".join),
       cuts=st.lists(st.integers(0, 400), max_size=8))
def test_fuzz_header_like_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    check_invariants(data, cuts, P.DEFAULT_MAX_PACKET)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(valid_items(), max_size=8),
       cuts=st.lists(st.integers(0, 1000), max_size=8))
def test_valid_streams_decode_exactly_in_any_chunking(items: list[tuple[bytes, tuple]],
                                                      cuts: list[int]) -> None:
    data = b"".join(raw for raw, _ in items)
    assert check_invariants(data, cuts, P.DEFAULT_MAX_PACKET) == [ev for _, ev in items]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(valid_items(), min_size=1, max_size=6),
       mutations=st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "set"]),
                                    st.integers(0, 10_000), st.integers(0, 255)),
                          min_size=1, max_size=4),
       cuts=st.lists(st.integers(0, 1000), max_size=8),
       max_packet=st.sampled_from([32, P.DEFAULT_MAX_PACKET]))
def test_fuzz_mutated_valid_streams_never_raise(items: list[tuple[bytes, tuple]],
                                                mutations: list[tuple[str, int, int]],
                                                cuts: list[int], max_packet: int) -> None:
    data = bytearray(b"".join(raw for raw, _ in items))
    for op, where, byte in mutations:
        if not data:
            break
        i = where % len(data)
        if op == "flip":
            data[i] ^= 1 << (byte % 8)
        elif op == "insert":
            data.insert(i, byte)
        elif op == "delete":
            del data[i]
        else:
            data[i] = byte
    check_invariants(bytes(data), cuts, max_packet)


# --------------------------------------------------------------------------- split_admin


@pytest.mark.parametrize(("line", "tokens"), [
    (b"status", [b"status"]),
    (b"show unique jobs", [b"show", b"unique", b"jobs"]),
    (b"maxqueue  f   1", [b"maxqueue", b"f", b"1"]),  # a run of spaces is one separator
    (b" status", [b"", b"status"]),  # leading space: empty first token
    (b"maxqueue f 1 ", [b"maxqueue", b"f", b"1", b""]),  # trailing space: empty last token
    (b"maxqueue\tabc\t3", [b"maxqueue\tabc\t3"]),  # a tab is not a separator
    (b"", [b""]),
    (b" ", [b"", b""]),
    (b"a b c d e f", [b"a", b"b", b"c", b"d", b"e", b"f"]),
    (b"cancel job H:vm:1\r", [b"cancel", b"job", b"H:vm:1\r"]),  # split_admin strips nothing
])
def test_split_admin(line: bytes, tokens: list[bytes]) -> None:
    assert split_admin(line) == tokens


# -- the response decoder and packet accessors (node/protocol.py owns the header)


def test_decode_packets_stops_at_an_incomplete_packet() -> None:
    whole = P.packet(P.JOB_CREATED, b"H:x:1") + P.packet(P.WORK_COMPLETE, b"H:x:1\0done")
    data = whole + P.packet(P.NOOP)[:7]
    got: list[tuple[int, bytes]] = []
    rest = P.decode_packets(data, lambda t, p: got.append((t, p)))
    assert got == [(P.JOB_CREATED, b"H:x:1"), (P.WORK_COMPLETE, b"H:x:1\0done")]
    assert rest == len(whole)
    assert P.decode_packets(data, lambda t, p: None, rest) == rest  # nothing more yet


def test_decode_packets_refuses_the_wrong_magic() -> None:
    with pytest.raises(P.BadMagic):
        P.decode_packets(P.request(P.ECHO_REQ, b"x"), lambda t, p: None)
    assert P.responses(P.request(P.ECHO_REQ, b"x"), magic=P.REQ) == [(P.ECHO_REQ, b"x")]


def test_responses_wants_whole_packets() -> None:
    assert P.responses(b"") == []
    assert P.responses(P.NOOP_PACKET * 2) == [(P.NOOP, b""), (P.NOOP, b"")]
    with pytest.raises(ValueError, match="truncated"):
        P.responses(P.packet(P.ECHO_RES, b"abc")[:-1])


def test_packet_accessors() -> None:
    data = P.packet(P.WORK_FAIL, b"H:n1:7")
    assert P.packet_type(data) == P.WORK_FAIL and P.packet_type(b"\0RES") == 0
    assert P.payload_of(data) == b"H:n1:7"
    assert P.first_arg(P.packet(P.WORK_COMPLETE, b"H:n1:7\0result")) == b"H:n1:7"
    assert P.first_arg(data) == b"H:n1:7"
    assert P.HEADER_SIZE == 12 and P.HEADER.unpack_from(data) == (P.RES, P.WORK_FAIL, 6)
