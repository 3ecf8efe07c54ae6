"""Loyalty points: a tollgate aggregate (world `tollgate:eventsourcing/aggregate@0.1.0`).

Behaves like the Rust template (`tollgate new`, cli/src/templates/aggregate.rs) run through
tollgate-sdk: same stream, versions, JSON bytes, rejection kinds and codes, and the same order
of checks (content type, command type, payload, state, business rules).

Commands  earn {points}    redeem {points}      points: integer 1 ..= 2^64-1
Events    earned {points}  redeemed {points}
State     {"balance":N}    (the state before the first event is {"balance":0})
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import (
    AggregateInfo,
    Command,
    Event,
    EventDraft,
    Rejection,
    RejectionKind,
)

STREAM = "loyalty"
JSON = "application/json"
EVENT_SCHEMA_VERSION = 1
STATE_VERSION = 1
U64_MAX = 2**64 - 1


# ---------------------------------------------------------------------------------------------
# JSON, read the way serde_json reads it (strict UTF-8, no NaN/Infinity, integers are integer
# tokens, `-0` is a float, a known field may not appear twice).


class _Obj(dict):
    """A JSON object that remembers which of its keys appeared more than once."""

    dups = frozenset()


def _pairs(pairs):
    obj = _Obj()
    dups = set()
    for k, v in pairs:
        if k in obj:
            dups.add(k)
        obj[k] = v
    obj.dups = frozenset(dups)
    return obj


def _no_constant(name):
    raise ValueError(f"`{name}` is not JSON")


def _int(token):
    # serde_json reads `-0` as a float, so a u64 field refuses it.
    return -0.0 if token == "-0" else int(token)


def _check_strings(v):
    # Python's json lets a lone surrogate escape (`"\\ud800"`) through; serde_json refuses it.
    stack = [v]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            v.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def parse_json(data):
    text = bytes(data).decode("utf-8")  # strict: invalid UTF-8 raises
    value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant, parse_int=_int)
    _check_strings(value)
    return value


def describe_value(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{'true' if v else 'false'}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f"string {json.dumps(v)}"
    if isinstance(v, list):
        return "sequence"
    return "map"


def u64_field(obj, field):
    """The u64 field `field` of a decoded JSON object, or a ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"invalid type: {describe_value(obj)}, expected an object with field `{field}`")
    if field in obj.dups:
        raise ValueError(f"duplicate field `{field}`")
    if field not in obj:
        raise ValueError(f"missing field `{field}`")
    v = obj[field]
    if type(v) is not int:  # bool is an int subclass: refused here
        raise ValueError(f"invalid type: {describe_value(v)}, expected u64 in `{field}`")
    if v < 0 or v > U64_MAX:
        raise ValueError(f"invalid value: integer `{v}`, expected u64 in `{field}`")
    return v


def encode_points(points):
    return b'{"points":%d}' % points


def encode_state(balance):
    return b'{"balance":%d}' % balance


# ---------------------------------------------------------------------------------------------


def malformed(code, message):
    return Err(Rejection(RejectionKind.MALFORMED, code, message))


def business(code, message):
    return Err(Rejection(RejectionKind.BUSINESS, code, message))


def unknown_command(command_type):
    return Err(Rejection(RejectionKind.UNKNOWN_COMMAND, "unknown-command", f"unknown command type `{command_type}`"))


def check_content_type(content_type, what, name):
    if content_type != JSON:
        raise malformed(
            "unsupported-content-type",
            f"{what} `{name}` has content type `{content_type}`; this actor reads `{JSON}`",
        )


def decode_state(state):
    """The balance in `state`; None is the state before the first event."""
    if state is None:
        return 0
    try:
        return u64_field(parse_json(state), "balance")
    except (ValueError, RecursionError) as e:
        raise malformed("malformed-state", f"state of `{STREAM}` does not decode: {e}")


COMMANDS = ("earn", "redeem")
EVENTS = ("earned", "redeemed")


def decode_command(command):
    check_content_type(command.content_type, "command", command.command_type)
    if command.command_type not in COMMANDS:
        raise unknown_command(command.command_type)
    try:
        return u64_field(parse_json(command.payload), "points")
    except (ValueError, RecursionError) as e:
        raise malformed(
            "malformed-command", f"payload of command `{command.command_type}` does not decode: {e}"
        )


def decode_event(event):
    check_content_type(event.content_type, "event", event.event_type)
    where = f"event `{event.event_type}` #{event.sequence} of {event.stream}/{event.key}"
    if event.event_type not in EVENTS:
        raise malformed("malformed-event", f"{where} does not decode: unknown variant `{event.event_type}`")
    try:
        return u64_field(parse_json(event.payload), "points")
    except (ValueError, RecursionError) as e:
        raise malformed("malformed-event", f"{where} does not decode: {e}")


def upcast_event(event):
    if event.schema_version == EVENT_SCHEMA_VERSION:
        return event
    if event.schema_version > EVENT_SCHEMA_VERSION:
        raise malformed(
            "unsupported-schema-version",
            f"event `{event.event_type}` has schema version {event.schema_version}, "
            f"newer than this actor's {EVENT_SCHEMA_VERSION}",
        )
    raise malformed(
        "unsupported-schema-version",
        f"event `{event.event_type}` has schema version {event.schema_version} "
        f"but this actor reads only version {EVENT_SCHEMA_VERSION}",
    )


def draft(event_type, points):
    return EventDraft(event_type, EVENT_SCHEMA_VERSION, JSON, encode_points(points))


class CommandHandler(exports.CommandHandler):
    def describe(self) -> AggregateInfo:
        return AggregateInfo(STREAM, JSON, EVENT_SCHEMA_VERSION, STATE_VERSION)

    def handle(self, state, command: Command):
        points = decode_command(command)
        balance = decode_state(state)
        if points == 0:
            raise malformed("zero-amount", "`points` must be > 0")
        if command.command_type == "earn":
            if balance + points > U64_MAX:
                # The Rust template would wrap the balance in a release build; refuse instead.
                raise malformed(
                    "points-out-of-range", f"{points} points would take the balance of {balance} past 2^64-1"
                )
            return [draft("earned", points)]
        if points > balance:
            raise business("insufficient-points", f"{points} asked, {balance} available")
        return [draft("redeemed", points)]

    def apply(self, state, events):
        balance = decode_state(state)
        for event in events:
            event = upcast_event(event)
            points = decode_event(event)
            if event.event_type == "earned":
                balance += points
            else:
                balance -= points
            if balance < 0 or balance > U64_MAX:
                raise malformed(
                    "malformed-event",
                    f"event `{event.event_type}` #{event.sequence} of {event.stream}/{event.key} "
                    f"takes the balance out of range (0 ..= 2^64-1)",
                )
        return encode_state(balance)

    def upcast(self, event: Event) -> Event:
        return upcast_event(event)
