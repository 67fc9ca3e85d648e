"""The JSON publisher (the default): each verdict as its JSON serialisation, QoS 1, on
<prefix>/<line>/<station>/verdict (or an MQTT 5 trigger's ResponseTopic, recorded with the verdict)."""

from __future__ import annotations

from edge.publishers.base import Publisher, register
from edge.queue import Pending

__all__ = ["JsonPublisher"]


@register("json")
class JsonPublisher(Publisher):
    qos = 1

    def message(self, row: Pending) -> tuple[str, bytes]:
        return row.topic, row.payload
