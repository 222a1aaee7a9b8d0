"""Message models and the typed codec each protocol builds from them."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict

from protocols._logsafe import logsafe
from protocols.errors import LocalProtocolError, MessageValidationError, UnknownMessageTypeError

M = TypeVar("M", bound=BaseModel)

MAX_ID_LEN = 256


class WireModel(BaseModel):
    """Base of every wire message and sub-object: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorMessage(WireModel):
    """Shared by all protocols: the request failed; ``code`` says how."""

    type: Literal["error"] = "error"
    code: str
    message: str


class MessageCodec(Generic[M]):
    """Turns frame objects into one of a protocol's message models and back."""

    def __init__(self, protocol: str, models: list[type[M]]) -> None:
        self.protocol = protocol
        self._by_type: dict[str, type[M]] = {}
        for model in models:
            field = model.model_fields["type"]
            type_name = field.default
            if not isinstance(type_name, str):
                raise TypeError(f"{model.__name__} needs a default string 'type'")
            self._by_type[type_name] = model

    @property
    def types(self) -> list[str]:
        return sorted(self._by_type)

    def decode(self, obj: dict[str, Any]) -> M:
        type_name = obj.get("type")
        model = self._by_type.get(type_name) if isinstance(type_name, str) else None
        if model is None:
            shown = f"'{logsafe(type_name, 64)}'" if isinstance(type_name, str) else "(none)"
            raise UnknownMessageTypeError(
                f"unknown {self.protocol} message type {shown} "
                f"(expected one of {', '.join(self.types)})"
            )
        try:
            return model.model_validate(obj)
        except pydantic.ValidationError as exc:
            raise MessageValidationError(
                f"invalid {self.protocol} {type_name!r} message: {describe_validation_error(exc)}"
            ) from None
        except RecursionError:  # FrameLimits bound the depth; a caller without them may not
            raise MessageValidationError(
                f"invalid {self.protocol} {type_name!r} message: nested too deeply"
            ) from None

    def encode(self, message: M) -> dict[str, Any]:
        if message.model_fields.get("type") is None:
            raise LocalProtocolError(f"{type(message).__name__} is not a wire message")
        return message.model_dump(mode="json")


def describe_validation_error(exc: pydantic.ValidationError) -> str:
    """One readable line from a pydantic error (first few problems).

    A location may hold a key the peer chose, so every part is made :func:`logsafe`.
    """
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(logsafe(p, 64) for p in err["loc"]) or "message"
        parts.append(f"{where}: {logsafe(err['msg'], 200)}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
