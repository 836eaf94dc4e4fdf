"""`edge-ad run --mqtt mqtt://[user[:password]@]host[:port]/TOPIC`: alarms and drift events to an
MQTT broker, where a plant's PLC gateway, SCADA or Node-RED takes them.

Each alarm frame's event (the JSON of an events line) goes to TOPIC/SOURCE/alarm and each drift
event to TOPIC/SOURCE/drift (SOURCE as snapshots name it), at QoS 1. TOPIC/status holds, retained,
"online" while the run is connected and "offline" after it: said by the run when it ends, and by
the broker itself (MQTT's last will) when the run dies or its network goes, so a PLC or SCADA
knows whether the inspection is alive. paho-mqtt's own thread
connects, reconnects with back-off (1 to 30 s) and keeps up to QUEUED_MESSAGES messages while the
broker is away, sent when it comes back; beyond that a message is dropped, which the runner
counts and reports as a failed write of this sink. A broker that is down does not stop the run.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import unquote, urlparse

from .errors import EdgeAdError
from .sinks import slug

log = logging.getLogger("edge_ad.mqtt")

QUEUED_MESSAGES = 1000  # kept while the broker is away
CLOSE_WAIT_S = 1.0  # how long close() waits for its "offline" to reach the broker


def parse_mqtt_url(url: str) -> tuple[str, int, str, str | None, str | None]:
    """(host, port, topic, user, password) of mqtt://[user[:password]@]host[:port]/topic."""
    parsed = urlparse(url)
    topic = parsed.path.strip("/")
    if parsed.scheme != "mqtt" or not parsed.hostname or not topic:
        raise EdgeAdError(f"--mqtt {url}: expected mqtt://[user[:password]@]host[:port]/topic, as in "
                          "mqtt://broker.local/line1")
    if "+" in topic or "#" in url:  # urlparse takes # for a fragment
        raise EdgeAdError(f"--mqtt {url}: the topic may not hold the wildcards + or #")
    user = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password else None
    return parsed.hostname, parsed.port or 1883, topic, user, password


class MqttPublisher:
    """Publishes events to TOPIC/SOURCE/alarm and TOPIC/SOURCE/drift (see the module docstring)."""

    def __init__(self, url: str):
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.url = url
        host, port, self.topic, user, password = parse_mqtt_url(url)
        self.status_topic = f"{self.topic}/status"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.max_queued_messages_set(QUEUED_MESSAGES)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._connected
        self.client.on_connect_fail = lambda client, userdata: log.warning(
            "--mqtt %s: cannot reach the broker; trying again, messages wait meanwhile", url)
        self.client.on_disconnect = self._disconnected
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self.client.connect_async(host, port)
        self.client.loop_start()

    def _connected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.error("--mqtt %s: the broker refused the connection (%s)", self.url, reason)
        else:
            log.info("--mqtt %s: connected", self.url)
            client.publish(self.status_topic, "online", qos=1, retain=True)

    def _disconnected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.warning("--mqtt %s: disconnected (%s); reconnecting", self.url, reason)

    def publish(self, event: dict) -> None:
        """One event: a frame's (an alarm) or a drift event."""
        kind = "drift" if event.get("event") == "drift" else "alarm"
        info = self.client.publish(f"{self.topic}/{slug(event['source'])}/{kind}", json.dumps(event), qos=1)
        if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued
            raise EdgeAdError(f"--mqtt {self.url}: message dropped ({self._mqtt.error_string(info.rc)}; "
                              f"{QUEUED_MESSAGES} already wait for the broker)")

    def close(self) -> None:
        """Say "offline" (after the alarms, which go out in order), give it a moment to reach the
        broker, then disconnect."""
        if self.client.is_connected():
            offline = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                offline.wait_for_publish(CLOSE_WAIT_S)
            except (RuntimeError, ValueError):  # not sent: the broker went away meanwhile
                pass
        self.client.disconnect()
        self.client.loop_stop()
