"""`edge-ad run --mqtt mqtt[s]://[user[:password]@]host[:port]/TOPIC`: alarms and drift events to an
MQTT broker, where a plant's PLC gateway, SCADA or Node-RED takes them.

mqtts:// speaks TLS (port 8883 by default) and checks the broker's certificate against the
system's CAs or a plant's own (`--mqtt-ca`); `--mqtt-cert` and `--mqtt-key` give the client
certificate that brokers which authenticate devices ask for. A password can come from the
environment (EDGE_AD_MQTT_PASSWORD, for a user in the URL without one) rather than the command
line, where `ps` shows it; logs and metrics name the broker by its URL without the password.

Each alarm frame's event (the JSON of an events line) goes to TOPIC/SOURCE/alarm, each drift
event to TOPIC/SOURCE/drift, a live camera's picture that froze or moves again to
TOPIC/SOURCE/frozen and a self-check that failed during the run (the run stops next) to
TOPIC/SOURCE/self_check (SOURCE as snapshots name it), at QoS 1. TOPIC/status holds, retained,
"online" while the run is connected and "offline" after it: said by the run when it ends, and by
the broker itself (MQTT's last will) when the run dies or its network goes, so a PLC or SCADA
knows whether the inspection is alive. With one bundle per product variant, the run listens on
TOPIC/SOURCE/variant: a variant's name there (retained, as a PLC publishes its recipe) has that
source's frames scored by that variant's bundle alone, an empty message or a name that is none
of its variants (warned about) by all of them again.
"start" on TOPIC/SOURCE/calibrate has the run calibrate that source on its next frames, "cancel"
stops that (edge_ad.line_calibration; not retained: a retained one would start a calibration at
every connection, and is ignored), and TOPIC/SOURCE/calibration holds, retained, how that
calibration stands: {"source", "state": idle|calibrating|calibrated|refused, "frames"}.

paho-mqtt's own thread connects, reconnects with back-off (1 to 30 s) and keeps up to
QUEUED_MESSAGES messages while the broker is away, sent when it comes back; beyond that a message
is dropped, which the runner counts and reports as a failed write of this sink. A broker that is
down does not stop the run.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

from .errors import EdgeAdError, client_text, encrypted_key, os_reason, parsed_uri, uri_port, without_passwords
from .sinks import slug

log = logging.getLogger("edge_ad.mqtt")

QUEUED_MESSAGES = 1000  # kept while the broker is away
CLOSE_WAIT_S = 1.0  # how long close() waits for its "offline" to reach the broker
PASSWORD_VARIABLE = "EDGE_AD_MQTT_PASSWORD"  # the password of a user named in the URL without one


@dataclass(frozen=True)
class MqttBroker:
    """Where --mqtt publishes: parse_mqtt_url's reading of the URL."""

    host: str
    port: int
    topic: str
    user: str | None
    password: str | None
    tls: bool
    shown: str  # the URL without its password, for logs and metrics


@dataclass(frozen=True)
class MqttTls:
    """The files of an mqtts:// connection: the CA that signed the broker's certificate (None: the
    system's CAs) and the client certificate and key, for brokers that authenticate devices."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


def parse_mqtt_url(url: str) -> MqttBroker:
    """The broker and topic of mqtt[s]://[user[:password]@]host[:port]/topic; a user without a
    password takes it from the environment variable EDGE_AD_MQTT_PASSWORD, if set."""
    try:
        parsed, port = parsed_uri(url), uri_port(url)
    except EdgeAdError as exc:
        raise EdgeAdError(f"--mqtt {exc}") from None
    topic = parsed.path.strip("/")
    shown = without_passwords(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname or not topic:
        raise EdgeAdError(f"--mqtt {shown}: expected mqtt[s]://[user[:password]@]host[:port]/topic, as in "
                          "mqtt://broker.local/line1 (mqtts: TLS)")
    if "+" in topic or "#" in url:  # urlparse takes # for a fragment
        raise EdgeAdError(f"--mqtt {shown}: the topic may not hold the wildcards + or #")
    user = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password else None
    if user is not None and password is None:
        password = os.environ.get(PASSWORD_VARIABLE)
    tls = parsed.scheme == "mqtts"
    return MqttBroker(parsed.hostname, port or (8883 if tls else 1883), topic, user, password, tls, shown)


def _tls_context(broker: MqttBroker, tls: MqttTls) -> ssl.SSLContext | None:
    """The TLS context of an mqtts:// broker (None for mqtt://); files that are missing or not
    certificates and keys are refused by name, before the run starts."""
    given = {flag: path for flag, path in (("--mqtt-ca", tls.ca), ("--mqtt-cert", tls.cert), ("--mqtt-key", tls.key))
             if path is not None}
    if not broker.tls:
        if given:
            raise EdgeAdError(f"{', '.join(given)}: TLS files need an mqtts:// URL, not {broker.shown}")
        return None
    if tls.key is not None and tls.cert is None:
        raise EdgeAdError("--mqtt-key: give the client certificate too (--mqtt-cert)")
    for flag, path in given.items():
        if not Path(path).is_file():
            raise EdgeAdError(f"{flag} {path}: {'a folder, not a file' if Path(path).is_dir() else 'no such file'}")
    try:  # the plant's CA alone when given, else the system's
        context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca is not None else None)
    except ssl.SSLError as exc:
        raise EdgeAdError(f"--mqtt-ca {tls.ca}: not a PEM certificate ({exc})") from None
    except OSError as exc:  # not readable by the user the run runs as
        raise EdgeAdError(f"--mqtt-ca {tls.ca}: cannot read it ({os_reason(exc)})") from None
    if tls.cert is not None:
        files = f"--mqtt-cert {tls.cert}" + (f", --mqtt-key {tls.key}" if tls.key is not None else "")
        try:
            key = ("--mqtt-key", tls.key) if tls.key is not None else ("--mqtt-cert", tls.cert)  # a key in the cert
            context.load_cert_chain(str(tls.cert), str(tls.key) if tls.key is not None else None,
                                    password=encrypted_key(*key))
        except ssl.SSLError as exc:
            raise EdgeAdError(f"{files}: not a PEM certificate and its private key ({exc})") from None
        except OSError as exc:  # a key readable by root only, the run another user (README: chown edge-ad)
            raise EdgeAdError(f"{files}: cannot read them ({os_reason(exc)})") from None
    return context


CALIBRATION_STATES = ("idle", "calibrating", "calibrated", "refused")  # edge_ad.line_calibration's, by number
CALIBRATE_COMMANDS = {"start": True, "cancel": False}


def variant_message(topic: str, message_topic: str, payload: bytes) -> tuple[str, str | None] | None:
    """(source, variant) of a message on TOPIC/SOURCE/variant; variant None for an empty one (every
    bundle scores again); None for a payload that is not text."""
    try:
        variant = payload.decode().strip() or None
    except UnicodeDecodeError:
        return None
    return message_topic[len(topic) + 1 : -len("/variant")], variant


class MqttPublisher:
    """Publishes events to TOPIC/SOURCE/alarm, /drift, /frozen and /self_check and, with
    `on_variant`, hands it what the line says on TOPIC/SOURCE/variant; with `on_calibrate`,
    (source, True) for "start" and (source, False) for "cancel" on TOPIC/SOURCE/calibrate (see
    the module docstring)."""

    def __init__(self, url: str, tls: MqttTls = MqttTls(),
                 on_variant: Callable[[str, str | None], None] | None = None,
                 on_calibrate: Callable[[str, bool], None] | None = None):
        broker = parse_mqtt_url(url)
        context = _tls_context(broker, tls)
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.url, self.topic = broker.shown, broker.topic
        self._hint = ""  # why a broker may close a TLS connection at once
        if broker.tls and tls.cert is None:
            self._hint = "; a broker that wants a client certificate (--mqtt-cert) closes the connection this way"
        self.status_topic = f"{self.topic}/status"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if broker.user is not None:
            self.client.username_pw_set(broker.user, broker.password)
        if context is not None:
            self.client.tls_set_context(context)
        self.client.max_queued_messages_set(QUEUED_MESSAGES)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._connected
        self.client.on_connect_fail = self._connect_failed
        self.client.on_disconnect = self._disconnected
        self.on_variant = on_variant  # (source as topics spell it, variant or None) from TOPIC/SOURCE/variant
        self.on_calibrate = on_calibrate  # (source as topics spell it, start) from TOPIC/SOURCE/calibrate
        self.client.on_message = self._message
        self.client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()

    def _connect_failed(self, client, userdata) -> None:
        # paho calls this while it handles the connection's OSError (refused, TLS failed, ...).
        reason = sys.exc_info()[1]
        log.warning("--mqtt %s: cannot connect to the broker (%s); trying again, messages wait meanwhile",
                    self.url, reason or "no reason given")

    def _connected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.error("--mqtt %s: the broker refused the connection (%s)", self.url, reason)
        else:
            log.info("--mqtt %s: connected", self.url)
            client.publish(self.status_topic, "online", qos=1, retain=True)
            if self.on_variant is not None:  # again after each reconnection: the retained variants come anew
                client.subscribe(f"{self.topic}/+/variant", qos=1)
            if self.on_calibrate is not None:
                client.subscribe(f"{self.topic}/+/calibrate", qos=1)

    def _message(self, client, userdata, message) -> None:
        if message.topic.endswith("/calibrate"):
            self._calibrate(message)
            return
        said = variant_message(self.topic, message.topic, message.payload)
        if said is None:
            log.warning("--mqtt %s: %s is not text; ignored", self.url, client_text(message.topic))
            return
        self.on_variant(*said)

    def _calibrate(self, message) -> None:
        source = message.topic[len(self.topic) + 1 : -len("/calibrate")]
        command = message.payload.decode(errors="replace").strip().lower()
        if message.retain:
            log.warning("--mqtt %s: %s is retained, so it would calibrate %s at every connection; ignored (publish "
                        "it without retain)", self.url, client_text(message.topic), client_text(source))
        elif command not in CALIBRATE_COMMANDS:
            log.warning("--mqtt %s: %s: %s is neither 'start' nor 'cancel'; ignored", self.url,
                        client_text(message.topic), client_text(command))
        else:
            self.on_calibrate(source, CALIBRATE_COMMANDS[command])

    def publish_calibration(self, source: str, state: int, frames: int) -> None:
        """How a calibration on the line stands, retained on TOPIC/SOURCE/calibration."""
        message = {"source": source, "state": CALIBRATION_STATES[state], "frames": frames}
        self.client.publish(f"{self.topic}/{slug(source)}/calibration", json.dumps(message), qos=1, retain=True)

    def _disconnected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.warning("--mqtt %s: disconnected (%s)%s; reconnecting", self.url, reason, self._hint)

    def publish(self, event: dict) -> None:
        """One event: a frame's (an alarm), a drift, frozen, self-check or away event."""
        kind = event["event"] if event.get("event") in ("drift", "frozen", "self_check", "away") else "alarm"
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
