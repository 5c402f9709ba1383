"""MQTT topic names (DESIGN.md §4). Every topic is ``fabpm/v1/{site}/{edge}/{kind}``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

ROOT = "fabpm/v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Kind(StrEnum):
    """The last segment of a topic, with the QoS each is published at."""

    STATUS = "status"
    ALERT = "alert"
    HARDCASE = "hardcase"
    EVENT = "event"
    TELEMETRY = "telemetry"
    TUNING = "tuning"
    VERDICT = "verdict"
    MODEL = "model"
    RECEIPT = "receipt"


QOS: dict[Kind, int] = {
    Kind.STATUS: 1,
    Kind.ALERT: 1,
    Kind.HARDCASE: 1,
    Kind.EVENT: 1,
    Kind.TELEMETRY: 0,
    Kind.TUNING: 1,
    Kind.VERDICT: 1,
    Kind.MODEL: 1,
    Kind.RECEIPT: 1,
}
RETAINED = frozenset({Kind.STATUS, Kind.MODEL})
EDGE_TO_CLOUD = frozenset({Kind.STATUS, Kind.ALERT, Kind.HARDCASE, Kind.EVENT, Kind.TELEMETRY, Kind.TUNING})
CLOUD_TO_EDGE = frozenset({Kind.VERDICT, Kind.MODEL, Kind.TUNING, Kind.RECEIPT})
# What the cloud confirms with a receipt once stored (the edge keeps these until then, when asked to).
CONFIRMED = frozenset({Kind.ALERT, Kind.HARDCASE, Kind.EVENT, Kind.TUNING})


def check_segment(value: str, what: str) -> str:
    """Site and edge ids become topic segments: no wildcards, slashes or spaces."""
    if not _SEGMENT.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '.', '-'")
    return value


def topic(site: str, edge: str, kind: Kind) -> str:
    """The topic for one edge and kind."""
    return f"{ROOT}/{check_segment(site, 'site')}/{check_segment(edge, 'edge')}/{kind.value}"


def cloud_subscription(kind: Kind, share_group: str | None = "fabpm-cloud") -> str:
    """The cloud's subscription for one kind over all sites and edges; shared when a group is given."""
    filt = f"{ROOT}/+/+/{kind.value}"
    return f"$share/{share_group}/{filt}" if share_group else filt


@dataclass(frozen=True, slots=True)
class TopicParts:
    """A parsed topic."""

    site: str
    edge: str
    kind: Kind


def parse_topic(name: str) -> TopicParts:
    """Split a fabpm topic into site, edge and kind; ValueError for anything else."""
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT:
        raise ValueError(f"not a fabpm topic: {name!r}")
    try:
        kind = Kind(parts[4])
    except ValueError as exc:
        raise ValueError(f"unknown topic kind in {name!r}") from exc
    return TopicParts(site=parts[2], edge=parts[3], kind=kind)
