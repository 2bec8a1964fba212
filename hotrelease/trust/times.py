"""ISO 8601 times: the one parser and the one format for every time hotrelease reads or
writes (manifests, approvals, labels, `--now`, freezes, agents' activation times)."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo


def format_time(moment: datetime) -> str:
    """UTC, whole seconds, `Z`: the form in every signed document and JSON report."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str, *, default_tz: tzinfo | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (`Z` accepted). A time without an offset takes
    `default_tz`, or is refused when there is none. ValueError says what is wrong; callers
    wrap it in their own error, naming the field."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        if default_tz is None:
            raise ValueError(f"{text!r} has no time zone")
        moment = moment.replace(tzinfo=default_tz)
    return moment.astimezone(UTC)
