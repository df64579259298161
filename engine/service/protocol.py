"""The wire format: request bodies checked field by field, operations as JSON objects.

Every request body is a JSON object whose fields are named and typed here; anything
else (not JSON, not an object, an unknown field, a wrong type) is refused with a
``BadRequest`` that names the field, which the server answers with 400.  No field is
passed on unchecked: the checks of the engine (``create_download``'s URI and path
checks, header checks) then run as for an application in the same process.

Operations travel as ``OpView`` objects; events as ``{"id", "epoch", "kind", ...}``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from engine.values import BackgroundTransferStatus, Credential

API = "/v1"
TERMINAL_NAMES = frozenset({"COMPLETED", "CANCELED", "ERROR"})


class BadRequest(ValueError):
    """A request the service cannot make sense of (HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = False


CREATE_FIELDS = {
    "uri": Field(str, required=True),
    "result_file": Field(str, required=True),
    "start": Field(bool),
    "method": Field(str),
    "priority": Field(str),
    "cost_policy": Field(str),
    "group": Field(str),
    "group_behavior": Field(str),
    "max_connections": Field(int),
    "block_size": Field(int),
    "headers": Field(list),
    "checksum": Field(str),
    "random_access": Field(bool),
    "recoverable": Field(list),
    "body_file": Field(str),
    "proxy": Field(str),
    "credentials": Field(dict),
    "sources": Field(list),
    "max_bytes_per_second": Field(int),
}
CONTROL_FIELDS = {"credentials": Field(dict)}
PATCH_FIELDS = {
    "uri": Field(str),
    "priority": Field(str),
    "cost_policy": Field(str),
    "random_access": Field(bool),
    "checksum": Field((str, type(None))),
    "headers": Field(list),
    "recoverable": Field(list),
    "max_bytes_per_second": Field(int),
}
CREDENTIAL_KINDS = ("server", "proxy")


def parse_body(raw: bytes, fields: dict[str, Field]) -> dict[str, Any]:
    """The checked fields of a JSON object body (an empty body is an empty object)."""
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    for name in data:
        if name not in fields:
            raise BadRequest(f"unknown field {name!r}")
    for name, spec in fields.items():
        if name not in data:
            if spec.required:
                raise BadRequest(f"missing field {name!r}")
            continue
        value = data[name]
        # bool is an int in Python, never in this protocol
        if not isinstance(value, spec.kind) or (isinstance(value, bool) and spec.kind is int):
            raise BadRequest(f"field {name!r} has the wrong type")
    if "headers" in data:
        data["headers"] = _pairs(data["headers"])
    if "recoverable" in data and not all(
        isinstance(v, int) and not isinstance(v, bool) for v in data["recoverable"]
    ):
        raise BadRequest("field 'recoverable' must be a list of status codes")
    if "credentials" in data:
        data["credentials"] = credentials(data["credentials"])
    for name in ("result_file", "body_file"):  # the service's working directory is /
        if name in data and not data[name].startswith("/"):
            raise BadRequest(f"field {name!r} must be an absolute path")
    return data


def _pairs(value: list[Any]) -> list[tuple[str, str]]:
    out = []
    for pair in value:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
        ):
            raise BadRequest("field 'headers' must be a list of [name, value] pairs")
        out.append((pair[0], pair[1]))
    return out


def credentials(value: dict[str, Any]) -> dict[str, Credential]:
    """``{"server": {"user", "password"}, "proxy": {...}}`` as Credentials."""
    out = {}
    for kind, pair in value.items():
        if kind not in CREDENTIAL_KINDS:
            raise BadRequest(f"unknown credential {kind!r}")
        if not (
            isinstance(pair, dict)
            and set(pair) == {"user", "password"}
            and all(isinstance(v, str) for v in pair.values())
        ):
            raise BadRequest(f"credential {kind!r} must be {{'user': str, 'password': str}}")
        out[kind] = Credential(pair["user"], pair["password"])
    return out


def credentials_json(server: Credential | None, proxy: Credential | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, cred in (("server", server), ("proxy", proxy)):
        if cred is not None:
            out[kind] = {"user": cred.user, "password": cred.password}
    return out


def enum_member(enum: Any, name: str, field: str) -> Any:
    try:
        return enum[name]
    except KeyError:
        raise BadRequest(f"field {field!r}: no such value {name!r}") from None


@dataclasses.dataclass
class OpView:
    """An operation as the service shows it."""

    guid: str
    uri: str
    result_file: str
    status: str
    bytes_received: int = 0
    total_bytes_to_receive: int = 0
    has_restarted: bool = False
    has_response_changed: bool = False
    method: str = "GET"
    priority: str = "DEFAULT"
    cost_policy: str = "DEFAULT"
    group: str | None = None
    random_access: bool = False
    checksum: str | None = None
    web_error: int | None = None
    error: str | None = None
    waiting_for_credentials: bool = False
    connections: int = 0
    headers: list[list[str]] = dataclasses.field(default_factory=list)
    sources: list[str] = dataclasses.field(default_factory=list)
    max_bytes_per_second: int = 0
    dropped_sources: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_NAMES

    @property
    def status_enum(self) -> BackgroundTransferStatus:
        return BackgroundTransferStatus[self.status]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OpView:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
