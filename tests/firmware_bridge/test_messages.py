"""Every message payload round-trips; malformed payloads raise MessageError only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.errors import MessageError
from firmware_bridge.messages import (
    Event,
    EventPoll,
    Events,
    FwBegin,
    FwBeginReply,
    FwChunk,
    Hello,
    Nak,
    Offset,
    Sensors,
    SetRequest,
    Status,
    from_decimal,
    to_decimal,
)

short_text = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 64)
u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)

hellos = st.builds(Hello, short_text, short_text, short_text, u16, st.integers(0, 2), u16, st.integers(0, 1))
statuses = st.builds(
    Status, st.booleans(), st.integers(0, 100), st.integers(0, 3),
    st.integers(-3000, 3000).map(lambda t: t / 10), st.integers(0, 65535).map(lambda mv: mv / 1000),
    u16, u32)
sets = st.builds(SetRequest, st.none() | st.integers(0, 100), st.none() | st.booleans(), st.none() | st.integers(0, 3))
names = st.from_regex(r"[a-z_][a-z0-9_]{0,31}", fullmatch=True)
values = st.decimals(min_value=-10**6, max_value=10**6, places=3, allow_nan=False).map(float)
sensors = st.builds(Sensors, st.dictionaries(names, values, max_size=32))
events = st.builds(Events, st.lists(st.builds(Event, u16, st.integers(0, 255), u16,
                                               st.integers(-2**31, 2**31 - 1), u32), max_size=16).map(tuple))
begins = st.builds(FwBegin, u32, st.binary(min_size=32, max_size=32),
                   st.text(max_size=10).filter(lambda s: len(s.encode()) <= 32))
chunks = st.builds(FwChunk, u32, st.binary(min_size=1, max_size=512))

CASES = [
    (hellos, Hello), (statuses, Status), (sets, SetRequest), (sensors, Sensors), (events, Events),
    (begins, FwBegin), (chunks, FwChunk), (st.builds(FwBeginReply, u32, u16), FwBeginReply),
    (st.builds(Offset, u32), Offset), (st.builds(Nak, st.integers(0, 255), u32), Nak),
    (st.builds(EventPoll, u16, st.booleans()), EventPoll),
]


@pytest.mark.parametrize(("strategy", "cls"), CASES, ids=[c.__name__ for _, c in CASES])
def test_round_trip(strategy: st.SearchStrategy, cls: type) -> None:
    @given(strategy)
    def check(msg: object) -> None:
        assert cls.unpack(msg.pack()) == msg  # type: ignore[attr-defined]

    check()


@pytest.mark.parametrize("cls", [c for _, c in CASES], ids=[c.__name__ for _, c in CASES])
def test_garbage_payload_raises_only_message_error(cls: type) -> None:
    @given(st.binary(max_size=300))
    def check(data: bytes) -> None:
        try:
            cls.unpack(data)  # type: ignore[attr-defined]
        except MessageError:
            pass

    check()


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9))
def test_decimal_sensor_values_are_close(value: float) -> None:
    mant, exp = to_decimal(value)
    assert -2**31 <= mant < 2**31 and -128 <= exp <= 127
    assert from_decimal(mant, exp) == pytest.approx(value, rel=1e-8, abs=1e-120)


def test_decimal_values_are_exact_for_typical_readings() -> None:
    for v in (23.7, 132.5, -5.25, 0.0, 1013.25, 99.9):
        assert from_decimal(*to_decimal(v)) == v


def test_out_of_range_status_is_refused() -> None:
    bad = bytearray(Status(True, 50, 1, 30.0, 24.0, 0, 1).pack())
    bad[1] = 150  # volume 150
    with pytest.raises(MessageError, match="volume=150"):
        Status.unpack(bytes(bad))


@given(st.integers(0, 255), st.binary(max_size=600), st.integers(0, 0xFFFF))
def test_reference_node_answers_any_request_without_raising(mtype: int, payload: bytes, seq: int) -> None:
    """Whatever a (buggy or hostile) master sends, the node answers or stays silent; it never crashes."""
    from firmware_bridge.frame import Frame
    from firmware_bridge.messages import MsgType
    from firmware_bridge.refnode import RefNode

    node = RefNode(1, "fuzz", kind="combo", seed=1)
    answer = node.handle(Frame(1, mtype, seq, payload), now=node.boot_time + 1)
    if answer is not None:
        assert answer.seq == seq and answer.is_response and answer.type in (mtype, MsgType.NAK)
        assert Frame(answer.address, answer.type, answer.seq, answer.payload, answer.flags).encode()
