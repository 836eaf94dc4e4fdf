"""--mqtt: alarm and drift events to a real MQTT broker (Mosquitto on 127.0.0.1), read back by a
subscriber; a broker that is away does not stop the run."""

import getpass
import json
import logging
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from edge_ad.detector import Detector
from edge_ad.errors import BundleError, EdgeAdError
from edge_ad.mqtt import PASSWORD_VARIABLE, MqttPublisher, MqttTls, parse_mqtt_url, variant_message
from edge_ad.pipelines import SourceOptions
from edge_ad.runner import RunConfig, VariantHints, run
from edge_ad.sources import open_source
from edge_ad.streams import Stream
from edge_ad.variants import VariantDetector

from conftest import MODULE_TYPES, SPOT_PATTERN, calibrated_copy, free_port, wait_for

MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


@pytest.fixture
def broker():
    port = free_port()
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


def test_mqtt_urls(monkeypatch):
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    plain = parse_mqtt_url("mqtt://broker.local/line1")
    assert (plain.host, plain.port, plain.topic, plain.user, plain.password, plain.tls) == \
        ("broker.local", 1883, "line1", None, None, False)
    secret = parse_mqtt_url("mqtt://qa:p%40ss@10.0.0.2:1884/plant/line2/")
    assert (secret.host, secret.port, secret.topic, secret.user, secret.password) == \
        ("10.0.0.2", 1884, "plant/line2", "qa", "p@ss")
    assert secret.shown == "mqtt://qa:***@10.0.0.2:1884/plant/line2/"  # what logs and metrics show
    tls = parse_mqtt_url("mqtts://qa@broker.local/line1")
    assert (tls.port, tls.tls, tls.password) == (8883, True, None)
    monkeypatch.setenv(PASSWORD_VARIABLE, "from-env")  # kept off the command line, where ps shows it
    assert parse_mqtt_url("mqtts://qa@broker.local/line1").password == "from-env"
    assert parse_mqtt_url("mqtts://qa:given@broker.local/line1").password == "given"
    for url in ("mqtt://broker.local", "http://broker.local/line1", "mqtt:///line1", "mqtt://b/line/#"):
        with pytest.raises(EdgeAdError, match=f"--mqtt {url}"):
            parse_mqtt_url(url)
    with pytest.raises(EdgeAdError, match=r"--mqtt mqtt://qa:\*\*\*@b: expected") as error:
        parse_mqtt_url("mqtt://qa:hunter2@b")
    assert "hunter2" not in str(error.value)
    with pytest.raises(EdgeAdError, match=r"--mqtt mqtt://qa:\*\*\*@b:99999/line: the port is not a number from 0 "
                                          r"to 65535$"):  # a traceback before, from urllib's ValueError
        parse_mqtt_url("mqtt://qa:hunter2@b:99999/line")
    with pytest.raises(EdgeAdError, match=re.escape("--mqtt mqtt://[fd00::5/line: not a URI that reads (an IPv6 "
                                                    "address without its ']')")):
        parse_mqtt_url("mqtt://[fd00::5/line")  # a traceback before


def _subscribe(port: int, topic: str, tls: dict | None = None) -> tuple[object, list[tuple[str, bytes]]]:
    """A started subscriber to `topic` on the broker at `port` (over TLS with `tls`, paho's
    tls_set arguments), and the list its messages go to."""
    import paho.mqtt.client as mqtt

    received, subscribed = [], threading.Event()
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if tls is not None:
        subscriber.tls_set(**tls)
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.on_message = lambda client, userdata, message: received.append((message.topic, message.payload))
    subscriber.connect("127.0.0.1", port)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    assert subscribed.wait(5)
    return subscriber, received


@needs_broker
def test_alarms_reach_the_broker(broker, spotted_frames, tiny_bundle):
    subscriber, received = _subscribe(broker, "plant/#")
    try:
        config = RunConfig(alarm_frames=2, mqtt=f"mqtt://127.0.0.1:{broker}/plant/line1")
        summary = run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "cam 1")], config)
        assert wait_for(lambda: (received[-1:] or [("", b"")])[-1][1] == b"offline")
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
def test_a_self_check_that_fails_is_told_before_offline(broker, normal_folder, tiny_bundle, monkeypatch):
    """Why the inspection went offline reaches the PLC or SCADA before the status says it."""
    detector = Detector.load(tiny_bundle)  # its load check passed

    def wrong_maps(self):
        raise BundleError(f"{self.bundle.root} on onnxruntime: the maps are not those it was exported with")

    monkeypatch.setattr(Detector, "self_check", wrong_maps)  # the engine went wrong during the run
    subscriber, received = _subscribe(broker, "plant/#")
    try:
        config = RunConfig(mqtt=f"mqtt://127.0.0.1:{broker}/plant/line1", self_check_interval_s=0.01)
        stream = Stream(str(normal_folder), "cam 1", options=SourceOptions(loop=-1))
        with pytest.raises(BundleError, match="self-check during the run"):
            run(detector, [stream], config)
        assert wait_for(lambda: (received[-1:] or [("", b"")])[-1][1] == b"offline")
    finally:
        subscriber.loop_stop()
    told = [(topic, payload) for topic, payload in received if not topic.endswith("/alarm")]
    assert [topic for topic, _ in told] == ["plant/line1/status", "plant/line1/cam-1/self_check", "plant/line1/status"]
    event = json.loads(told[1][1])
    assert (event["event"], event["source"], event["bundle"]) == ("self_check", "cam 1", detector.bundle.short_ids[0])
    assert event["problem"] == f"{tiny_bundle} on onnxruntime: the maps are not those it was exported with"


@needs_broker
def test_a_live_camera_whose_picture_froze_is_told(broker, tiny_bundle, tmp_path, caplog):
    """A live camera that sends the same picture on and on (here a live white picture) is told once
    in the log, the events and on TOPIC/SOURCE/frozen; one whose picture moves
    (noise), and a test:// pattern (not a camera), are not."""
    def live(pattern: str) -> str:
        return (f"videotestsrc is-live=true pattern={pattern} ! video/x-raw,width=64,height=48,framerate=30/1 ! "
                "videoconvert ! video/x-raw,format=BGR ! appsink name=sink")

    streams = [Stream("", "still", pipeline=live("white")), Stream("", "moving", pipeline=live("snow")),
               Stream("test://white?width=64&height=48", "pattern")]
    subscriber, received = _subscribe(broker, "plant/#")
    try:
        config = RunConfig(mqtt=f"mqtt://127.0.0.1:{broker}/plant/line1", events=tmp_path / "ev.jsonl",
                           frozen_window_s=2.0, max_frames=90)
        with caplog.at_level(logging.WARNING, logger="edge_ad.runner"):
            run(Detector.load(tiny_bundle), streams, config)
        assert wait_for(lambda: (received[-1:] or [("", b"")])[-1][1] == b"offline")
    finally:
        subscriber.loop_stop()
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    frozen = [e for e in events if e.get("event") == "frozen"]
    assert [(e["source"], e["state"]) for e in frozen] == [("still", "frozen")] and frozen[0]["still_s"] >= 1.0
    still = [e for e in events if e["source"] == "still" and e["event"] == "frame"]
    assert still[0]["timestamp"] + 2.0 <= frozen[0]["timestamp"] <= still[-1]["timestamp"]
    told = [(topic, json.loads(payload)) for topic, payload in received if topic.endswith("/frozen")]
    assert told == [("plant/line1/still/frozen", frozen[0])]
    assert "still: the camera's picture stood still, to the last bit, for 2 s of the last 2 s" in caplog.text
    assert caplog.text.count("picture stood still") == 1


@needs_broker
def test_a_camera_away_is_told_on_its_away_topic(broker, tiny_bundle, normal_folder):
    """A camera not there (here from the start, beside one that is): TOPIC/SOURCE/away, as a PLC
    gateway or SCADA could not tell a camera away from a line without parts before."""
    subscriber, received = _subscribe(broker, "plant/#")
    streams = [Stream(str(normal_folder), "cam 1", options=SourceOptions(loop=-1)), Stream("/dev/video97", "cam 2")]
    stop = threading.Event()
    config = RunConfig(mqtt=f"mqtt://127.0.0.1:{broker}/plant/line1")
    thread = threading.Thread(target=run, args=(Detector.load(tiny_bundle), streams, config, stop))
    thread.start()
    try:
        assert wait_for(lambda: any(topic.endswith("/away") for topic, _ in received), 20)
    finally:
        stop.set()
        thread.join(timeout=30)
        subscriber.loop_stop()
    [(topic, payload)] = [(topic, payload) for topic, payload in received if topic.endswith("/away")]
    event = json.loads(payload)
    assert topic == "plant/line1/cam-2/away" and (event["event"], event["source"], event["state"]) == \
        ("away", "cam 2", "away")


@needs_broker
def test_a_broker_that_is_away_does_not_stop_the_run(spotted_frames, tiny_bundle):
    config = RunConfig(alarm_frames=2, mqtt=f"mqtt://127.0.0.1:{free_port()}/plant/line1")  # nobody listens
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
        assert wait_for(lambda: (b"online" in [p for _, p in received]), 30), "the run never said online"
        process.kill()
        assert wait_for(lambda: [p for _, p in received][-1] == b"offline", 10)
    finally:
        process.kill()
        process.wait()
        subscriber.loop_stop()


OPENSSL = shutil.which("openssl")


@pytest.fixture
def tls_files(tmp_path) -> dict[str, Path]:
    """A plant CA, the broker's certificate for 127.0.0.1 and a device's client certificate signed
    by it, and a second CA that signed neither (openssl)."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        subprocess.run([OPENSSL, "req", "-x509", *ec, "-keyout", tmp_path / f"{ca}.key", "-out", tmp_path / f"{ca}.pem",
                        "-days", "2", "-subj", f"/CN={ca}"], check=True, capture_output=True)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        subprocess.run([OPENSSL, "req", *ec, "-keyout", tmp_path / f"{name}.key", "-out", tmp_path / f"{name}.csr",
                        "-subj", f"/CN={name}"], check=True, capture_output=True)
        subprocess.run([OPENSSL, "x509", "-req", "-in", tmp_path / f"{name}.csr", "-CA", tmp_path / "ca.pem", "-CAkey",
                        tmp_path / "ca.key", "-CAcreateserial", "-out", tmp_path / f"{name}.pem", "-days", "2",
                        "-extfile", tmp_path / "san.ext"], check=True, capture_output=True)
    return {f.stem if f.suffix == ".pem" else f.name: f for f in tmp_path.iterdir() if f.suffix in (".pem", ".key")}


@pytest.fixture
def tls_broker(tls_files, tmp_path):
    """Mosquitto on 127.0.0.1 speaking TLS only, asking every client for a certificate of the plant CA."""
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n"
                      f"cafile {tls_files['ca']}\ncertfile {tls_files['server']}\nkeyfile {tls_files['server.key']}\n"
                      f"user {getpass.getuser()}\n")  # as root, read the files as root
    process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: _listening(port)), "mosquitto did not start"
    yield port
    process.kill()
    process.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@needs_broker
def test_alarms_reach_a_tls_broker_with_a_client_certificate(tls_broker, tls_files, spotted_frames, tiny_bundle,
                                                              caplog):
    device = MqttTls(tls_files["ca"], tls_files["client"], tls_files["client.key"])
    subscriber, received = _subscribe(tls_broker, "plant/#", {"ca_certs": str(tls_files["ca"]),
                                                              "certfile": str(tls_files["client"]),
                                                              "keyfile": str(tls_files["client.key"])})
    try:
        config = RunConfig(alarm_frames=2, mqtt=f"mqtts://127.0.0.1:{tls_broker}/plant/line1", mqtt_tls=device)
        summary = run(Detector.load(tiny_bundle), [Stream(str(spotted_frames), "cam")], config)
        assert wait_for(lambda: (received[-1:] or [("", b"")])[-1][1] == b"offline")
        assert summary.alarms == 3 and summary.sink_errors == {}
        assert sorted(json.loads(p)["frame"] for t, p in received if t == "plant/line1/cam/alarm") == [4, 7, 8]

        # A broker whose certificate another CA signed is not trusted: nothing is sent, the run goes on.
        received.clear()
        stranger = MqttTls(tls_files["other-ca"], tls_files["client"], tls_files["client.key"])
        config = RunConfig(mqtt=f"mqtts://127.0.0.1:{tls_broker}/plant/line2", mqtt_tls=stranger, max_frames=30)
        with caplog.at_level(logging.WARNING, logger="edge_ad.mqtt"):  # a second of a live camera, every frame alarms
            summary = run(Detector.load(tiny_bundle), [Stream("test://?width=64&height=48", "cam")], config)
        assert "certificate verify failed" in caplog.text
        assert summary.frames == 30 and summary.alarms == 30
        assert not any(topic.startswith("plant/line2") for topic, _ in received)
    finally:
        subscriber.loop_stop()


def test_tls_files_are_checked_before_the_run(tls_files, tmp_path, monkeypatch):
    url = "mqtts://qa:hunter2@127.0.0.1:1/plant"
    tls_files["locked.key"] = tmp_path / "locked.key"
    subprocess.run([OPENSSL, "pkey", "-in", tls_files["client.key"], "-out", tls_files["locked.key"], "-aes256",
                    "-passout", "pass:pw"], check=True, capture_output=True)
    for tls, error in [
        (MqttTls(tmp_path / "none.pem"), f"--mqtt-ca {tmp_path / 'none.pem'}: no such file"),
        (MqttTls(tmp_path), f"--mqtt-ca {tmp_path}: a folder, not a file"),  # was "no such file"
        (MqttTls(tmp_path / "san.ext"), f"--mqtt-ca {tmp_path / 'san.ext'}: not a PEM certificate"),
        (MqttTls(tls_files["ca"], tls_files["client"], tls_files["server.key"]),
         f"--mqtt-cert {tls_files['client']}, --mqtt-key {tls_files['server.key']}: not a PEM certificate and its "
         "private key"),
        (MqttTls(key=tls_files["client.key"]), "--mqtt-key: give the client certificate too (--mqtt-cert)"),
        # OpenSSL asked for its password on the terminal, where the service has no one to type it
        (MqttTls(tls_files["ca"], tls_files["client"], tls_files["locked.key"]),
         f"--mqtt-key {tls_files['locked.key']}: the key is encrypted"),
    ]:
        with pytest.raises(EdgeAdError) as raised:
            MqttPublisher(url, tls)
        assert error in str(raised.value)
    # A key the run's user may not read was "not a PEM certificate and its private key"
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", denied)
    with pytest.raises(EdgeAdError, match=re.escape(f"--mqtt-cert {tls_files['client']}, --mqtt-key "
                                                    f"{tls_files['client.key']}: cannot read them (Permission denied to")):
        MqttPublisher(url, MqttTls(tls_files["ca"], tls_files["client"], tls_files["client.key"]))
    with pytest.raises(EdgeAdError) as raised:
        MqttPublisher("mqtt://qa:hunter2@127.0.0.1:1/plant", MqttTls(tls_files["ca"]))
    assert str(raised.value) == "--mqtt-ca: TLS files need an mqtts:// URL, not mqtt://qa:***@127.0.0.1:1/plant"


def _publish_retained(port: int, topic: str, payload: str) -> None:
    _publish(port, topic, payload, retain=True)


@needs_broker
def test_the_line_says_which_variant_each_source_sees(broker, variant_bundles, tmp_path, caplog):
    """A PLC publishes its recipe, retained, on TOPIC/SOURCE/variant: that source's frames are then
    scored by that variant's bundle alone; a name that is none of the variants is ignored."""
    detector = VariantDetector({t: Detector.load(variant_bundles[t]) for t in MODULE_TYPES})
    pattern = "test://?width=160&height=120"
    (first,) = [f.image for f, _ in zip(open_source(pattern).frames(), range(1))]
    chosen = detector(first).variant  # which bundle the test pattern looks most normal to
    told = next(t for t in MODULE_TYPES if t != chosen)
    _publish_retained(broker, "plant/line1/cam-a/variant", told)
    _publish_retained(broker, "plant/line1/cam-b/variant", "tray")
    _publish_retained(broker, "plant/line1/cam-c/variant", "mono")  # no such source
    events = tmp_path / "events.jsonl"
    config = RunConfig(mqtt=f"mqtt://127.0.0.1:{broker}/plant/line1", events=events, max_frames=60)
    with caplog.at_level(logging.INFO):
        run(detector, [Stream(pattern, "cam-a"), Stream(pattern, "cam-b")], config)  # 2 s of a live camera
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    said = [e["variant"] for e in lines if e["source"] == "cam-a"]
    assert said[-30:] == [told] * 30  # once the retained message arrived (within ms of connecting)
    assert [e["variant"] for e in lines if e["source"] == "cam-b"][-30:] == [chosen] * 30
    assert f"mqtt: the line says cam-a makes '{told}'" in caplog.text
    assert "mqtt: told the variant of 'cam-c', which is none of the sources (cam-a, cam-b); ignored" in caplog.text
    assert "cam-b: the line says variant 'tray', which is none of its variants (mono, poly); scoring with all" \
        in caplog.text


def test_a_variant_message_names_its_source():
    assert variant_message("plant/line1", "plant/line1/cam-1/variant", b" poly\n") == ("cam-1", "poly")
    assert variant_message("plant/line1", "plant/line1/cam-1/variant", b"") == ("cam-1", None)  # every bundle again
    assert variant_message("plant/line1", "plant/line1/cam-1/variant", b"\xff") is None  # not text: ignored


def test_a_variant_none_of_the_sources_has_scores_with_all_and_is_logged_clipped(caplog):
    """What a client sends goes to the log on one line and cut short: a payload of any length, with
    line breaks that would forge log lines of their own."""
    hints = VariantHints({"cam-1": ["mono", "poly"], "cam-2": []})
    capture = lambda name: SimpleNamespace(stream=Stream("test://", name))  # noqa: E731
    hints.set("cam-1", "poly")
    assert hints.of(capture("cam-1")) == "poly" and hints.of(capture("cam-2")) is None
    with caplog.at_level(logging.WARNING, logger="edge_ad.runner"):
        hints.set("cam-1", "tray\nERROR forged" + "x" * 100_000)
        hints.set("cam-2", "mono")
    assert hints.of(capture("cam-1")) is None  # poly is no longer made: every bundle scores
    assert hints.of(capture("cam-2")) is None
    first, second = caplog.messages
    assert first.startswith("cam-1: the line says variant 'tray\\nERROR forgedxxx") and len(first) < 250
    assert "\n" not in first and first.endswith("which is none of its variants (mono, poly); scoring with all")
    assert second == "cam-2: the line says variant 'mono', which is none of its variants (it has one bundle); " \
        "scoring with all"
    hints.set("cam-1", "mono")
    hints.set("cam-1", None)  # an empty message: every bundle again
    assert hints.of(capture("cam-1")) is None and hints.said == {}


@needs_broker
def test_the_line_asks_a_source_to_calibrate(broker, tiny_bundle, normal_folder, tmp_path, caplog):
    """"start" on TOPIC/SOURCE/calibrate has the run calibrate that source on its next frames and
    TOPIC/SOURCE/calibration say how it stands; a retained "start" (which would calibrate at
    every connection) is ignored."""
    bundle = calibrated_copy(tiny_bundle, normal_folder, tmp_path / "bundle")
    _publish_retained(broker, "plant/line1/cam/calibrate", "start")
    subscriber, received = _subscribe(broker, "plant/line1/cam/calibration")
    states = lambda: [json.loads(payload)["state"] for _, payload in received]  # noqa: E731
    stop, before = threading.Event(), []

    def line() -> None:
        time.sleep(1.5)  # the retained "start" came at the run's connection
        before.extend(states())
        _publish(broker, "plant/line1/cam/calibrate", "start")
        wait_for(lambda: "calibrated" in states(), 60)
        time.sleep(0.5)
        stop.set()

    threading.Thread(target=line, daemon=True).start()
    stream = Stream(str(normal_folder), "cam", options=SourceOptions(loop=-1))
    config = RunConfig(mqtt=f"mqtt://127.0.0.1:{broker}/plant/line1", calibration_frames=30)
    try:
        with caplog.at_level(logging.INFO):
            run(Detector.load(bundle), [stream], config, stop=stop)
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
    assert before == []
    assert "'plant/line1/cam/calibrate' is retained, so it would calibrate 'cam' at every connection; ignored" \
        in caplog.text
    assert states() == ["calibrating", "calibrated"]
    assert json.loads(received[-1][1]) == {"source": "cam", "state": "calibrated", "frames": 30}
    assert yaml.safe_load((bundle / "calibration.yaml").read_text())["source"] == f"{normal_folder} (edge-ad run)"


def _publish(port: int, topic: str, payload: str, retain: bool = False) -> None:
    """One message from a PLC's gateway, as it publishes it."""
    import paho.mqtt.client as mqtt

    plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    plc.connect("127.0.0.1", port)
    plc.loop_start()
    plc.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    plc.disconnect()
    plc.loop_stop()
