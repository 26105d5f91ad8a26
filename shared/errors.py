"""The project's exception types. Each names the field, file or topic it is about."""

from __future__ import annotations


class PlatewatchError(Exception):
    """Base of every error platewatch raises on purpose."""


class FieldError(PlatewatchError):
    """A value that cannot be accepted: names the field, shows the value (cut), says why."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}={shown}: {reason}")
        self.field = field
        self.reason = reason


class PayloadError(FieldError):
    """An event payload that cannot be accepted: names the field and why."""


class TopicError(PlatewatchError):
    """A topic that does not have the shape its parser expects."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"topic {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


class ConfigError(PlatewatchError):
    """Bad configuration: start-up stops with this message."""


class SignatureError(PlatewatchError):
    """An event whose signature is missing, malformed or does not verify."""
