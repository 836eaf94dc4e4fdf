"""--mqtt: alarm and drift events to a real MQTT broker (Mosquitto on 127.0.0.1), read back by a
subscriber; a broker that is away does not stop the run."""

import json
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from edge_ad.detector import Detector
from edge_ad.errors import EdgeAdError
from edge_ad.mqtt import parse_mqtt_url
from edge_ad.runner import RunConfig, run
from edge_ad.streams import Stream

from conftest import SPOT_PATTERN

MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker():
    port = _free_port()
    process = subprocess.Popen([MOSQUITTO, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port
    process.kill()
    process.wait()


def test_mqtt_urls():
    assert parse_mqtt_url("mqtt://broker.local/line1") == ("broker.local", 1883, "line1", None, None)
    assert parse_mqtt_url("mqtt://qa:p%40ss@10.0.0.2:1884/plant/line2/") == ("10.0.0.2", 1884, "plant/line2", "qa", "p@ss")
    for url in ("mqtt://broker.local", "http://broker.local/line1", "mqtt:///line1", "mqtt://b/line/#"):
        with pytest.raises(EdgeAdError, match=f"--mqtt {url}"):
            parse_mqtt_url(url)


def _subscribe(port: int, topic: str) -> tuple[object, list[tuple[str, bytes]]]:
    """A started subscriber to `topic` on the broker at `port`, and the list its messages go to."""
    import paho.mqtt.client as mqtt

    received, subscribed = [], threading.Event()
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.on_message = lambda client, userdata, message: received.append((message.topic, message.payload))
    subscriber.connect("127.0.0.1", port)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    assert subscribed.wait(5)
    return subscriber, received


def _wait_for(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@needs_broker
def test_alarms_reach_the_broker(broker, spotted_frames, tiny_bundle):
    subscriber, received = _subscribe(broker, "plant/#")
    try:
        config = RunConfig(alarm_frames=2, mqtt=f"mqtt://127.0.0.1:{broker}/plant/line1")
        summary = run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "cam 1")], config)
        assert _wait_for(lambda: (received[-1:] or [("", b"")])[-1][1] == b"offline")
    finally:
        subscriber.loop_stop()
    assert summary.alarms == 3 and summary.sink_errors == {}
    statuses = [payload for topic, payload in received if topic == "plant/line1/status"]
    assert statuses == [b"online", b"offline"]  # retained: what a PLC reads of the inspection
    alarms = [(topic, payload) for topic, payload in received if topic != "plant/line1/status"]
    assert {topic for topic, _ in alarms} == {"plant/line1/cam-1/alarm"}
    events = [json.loads(payload) for _, payload in alarms]
    assert sorted(e["frame"] for e in events) == [4, 7, 8]
    assert all(e["alarm"] and e["anomaly"] and e["source"] == "cam 1" and e["score"] >= e["threshold"] for e in events)


@needs_broker
def test_a_broker_that_is_away_does_not_stop_the_run(spotted_frames, tiny_bundle):
    config = RunConfig(alarm_frames=2, mqtt=f"mqtt://127.0.0.1:{_free_port()}/plant/line1")  # nobody listens
    summary = run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "cam")], config)
    assert summary.frames == len(SPOT_PATTERN) and summary.alarms == 3
    assert summary.sink_errors == {}  # the three alarms wait in paho's queue for the broker


@needs_broker
def test_the_broker_says_offline_when_the_run_dies(broker, tiny_bundle):
    """MQTT's last will: a run killed without a word is reported offline by the broker itself."""
    subscriber, received = _subscribe(broker, "plant/line2/status")
    process = subprocess.Popen([sys.executable, "-m", "edge_ad", "run", "--bundle", str(tiny_bundle), "--input",
                                "test://ball?width=64&height=48", "--mqtt", f"mqtt://127.0.0.1:{broker}/plant/line2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: (b"online" in [p for _, p in received]), 30), "the run never said online"
        process.kill()
        assert _wait_for(lambda: [p for _, p in received][-1] == b"offline", 10)
    finally:
        process.kill()
        process.wait()
        subscriber.loop_stop()
