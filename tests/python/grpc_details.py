"""Reads the error details the gateway attaches to a gRPC status (`grpc-status-details-bin`: a
`google.rpc.Status` whose details hold `google.rpc.ErrorInfo` and `google.rpc.BadRequest`),
with a minimal protobuf wire reader, so tests need no googleapis stubs."""

from __future__ import annotations

import grpc

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: ints for varints, bytes for the rest."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = _varint(buf, i)
        elif wire_type == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire_type == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire_type == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        out.append((number, value))
    return out


def _details(error: grpc.RpcError) -> list[tuple[str, bytes]]:
    """(type URL, encoded message) of each `google.protobuf.Any` in the status details."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, "the status carries no details"
    anys = [value for number, value in _fields(raw) if number == 3]
    out = []
    for any_ in anys:
        fields = dict(_fields(any_))
        out.append((fields[1].decode(), fields.get(2, b"")))
    return out


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    """The `field` of every `BadRequest.field_violations` entry."""
    fields = []
    for type_url, message in _details(error):
        if type_url == BAD_REQUEST:
            for number, violation in _fields(message):
                if number == 1:
                    fields.append(dict(_fields(violation))[1].decode())
    return fields


def error_reason(error: grpc.RpcError) -> str | None:
    """`ErrorInfo.reason`, if the status has one."""
    for type_url, message in _details(error):
        if type_url == ERROR_INFO:
            return dict(_fields(message)).get(1, b"").decode()
    return None
