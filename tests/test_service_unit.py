"""`edge-ad service run ...`: the unit for a run's command line, read back by systemd itself."""

import os
import pwd
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from edge_ad.cli import main
from edge_ad.service_unit import UNIT_TEMPLATE, setting, started_words

from conftest import SYSTEMD_ANALYZE, check_with_systemd


def _service(argv: list[str], capsys) -> tuple[int, str, str]:
    """`edge-ad service ARGV`: exit code, the unit (stdout), the steps or error (stderr)."""
    try:
        code = main(["service", *argv])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _systemd_command_line(unit_text: str) -> list[str]:
    """The ExecStart= argv as systemd 252 itself reads the unit (`systemd --test` dumps what it
    loaded), with `$$` left for exec time as systemd leaves it. systemd refuses --test as root,
    so there it runs as nobody."""
    systemd = Path("/lib/systemd/systemd")
    if not systemd.is_file():
        pytest.skip("no systemd here to read the unit")
    as_nobody = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user 'nobody' to run systemd --test as")
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    with tempfile.TemporaryDirectory() as folder:  # /tmp itself: pytest's tmp_path is its owner's only
        os.chmod(folder, 0o755)
        (Path(folder) / "edge-ad.service").write_text(unit_text)
        dumped = subprocess.run([*as_nobody, str(systemd), "--test", "--system", "--unit=edge-ad.service",
                                 "--no-pager"], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "HOME": folder,
                                     "SYSTEMD_UNIT_PATH": folder + ":"})  # ":": the system's units after it
    assert dumped.returncode == 0, dumped.stderr
    ours = dumped.stdout.split("-> Unit edge-ad.service:")[1].split("-> Unit ")[0]
    started = re.search(r"-> ExecStart:\n\s*Command Line: (.*)", ours)
    assert started, f"systemd loaded no ExecStart from the unit: {dumped.stderr}"
    started = started.group(1)
    # systemd writes each word back C-escaped, in double quotes where it needs them
    words = (m.group(1) if m.group(2) is None else m.group(2)
             for m in re.finditer(r'"((?:[^"\\]|\\.)*)"|(\S+)', started))
    escapes = {"t": "\t", "n": "\n"}
    return [re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), word).replace("$$", "$")
            for word in words]


def test_the_unit_runs_the_command_line_as_typed(tmp_path, monkeypatch, capsys):
    """Words a shell takes as they are but systemd would not: a picture name's % (a systemd
    specifier: the unit would not load), a $ (a variable), quotes, blanks, a backslash, a lone
    semicolon (a second command), an empty word."""
    monkeypatch.chdir(tmp_path)
    run = ["--bundle", "my bundle", "--input", "test://ball", "--output", "out/%05d.jpg", "--events", "events.jsonl",
           "--on-anomaly", 'logger "part $EDGE_AD_SCORE" \\ ;', "--pipeline", "", "--input", "parts/it's\there.png",
           "--output", "over lays/", "--platform", "generic"]
    code, unit, err = _service(["run", *run], capsys)
    assert code == 0, err
    assert setting(unit, "WorkingDirectory") == str(tmp_path)  # relative paths as in the shell
    words = started_words(unit)  # as doctor reads the installed unit back, and as systemd does below
    assert words[words.index("run"):] == ["run", *run]
    argv = _systemd_command_line(unit)
    assert argv[0].endswith("edge-ad") or argv[1:3] == ["-m", "edge_ad"]
    assert argv[argv.index("run"):] == ["run", *run]
    assert setting(unit, "User") == setting(UNIT_TEMPLATE.read_text(), "User") != "root"
    assert "sudo systemctl daemon-reload && sudo systemctl enable --now edge-ad" in err
    assert "edge-ad doctor --bundle 'my bundle'" in err  # what the user may not read or write yet
    assert "sudoedit" not in err
    # A drop-in of the installed unit (`systemctl edit edge-ad`) with a line of its own: systemd
    # runs that one, and the unit written again would change nothing.
    installed = tmp_path / "etc" / "edge-ad.service"
    monkeypatch.setattr("edge_ad.service_unit.INSTALLED_UNIT", installed)
    override = tmp_path / "etc" / "edge-ad.service.d" / "override.conf"
    override.parent.mkdir(parents=True)
    override.write_text("[Service]\nEnvironment=A=1\n")
    assert "sudoedit" not in _service(["run", *run], capsys)[2]
    sudoedit = f"sudoedit {override}  (delete its ExecStart= lines: systemd takes them instead of this unit's)"
    override.write_text("[Service]\nExecStart=\nExecStart=/usr/bin/edge-ad run --input csi://0\n")
    assert sudoedit in _service(["run", *run], capsys)[2]
    override.write_text("[Service]\nExecStart=\n")  # the unit's line dropped and none given
    assert sudoedit in _service(["run", *run], capsys)[2]


def test_passwords_stay_out_of_the_unit(tmp_path, monkeypatch, capsys):
    """A unit is every user's to read (systemctl show prints it): a camera's password in its URL or
    pipeline is refused without being echoed, and the passwords the run reads from its
    environment are said to go into the unit's root-only EnvironmentFile."""
    monkeypatch.chdir(tmp_path)
    code, unit, err = _service(["run", "--input", "rtsp://admin:s3cret@10.0.7.21/stream",
                                "--pipeline", "rtspsrc location=rtsp://cam/1 user-id=op user-pw=s3cret ! appsink "
                                "name=sink"], capsys)
    assert code == 2 and unit == ""
    assert "rtsp://admin:***@10.0.7.21/stream" in err and "user-pw=*** !" in err and "s3cret" not in err
    assert "--sources file" in err
    code, unit, err = _service(["run", "--input", "csi://0", "--output", "http://@:8080/line", "--output-user", "op",
                                "--mqtt", "mqtts://line7@broker/plant"], capsys)
    assert code == 0, err
    secrets = setting(unit, "EnvironmentFile").lstrip("-")
    assert f"sudo install -D -m 600 /dev/null {secrets}" in err
    assert "EDGE_AD_OUTPUT_PASSWORD=..., EDGE_AD_MQTT_PASSWORD=..." in err


def test_what_the_sandbox_keeps_read_only_is_refused_before_boot(tmp_path, monkeypatch, capsys):
    """The unit sees /home, /root, /usr and /etc read-only: events or snapshots written there, tried
    in a shell, would fail the service at its start."""
    monkeypatch.chdir(tmp_path)
    code, unit, err = _service(["run", "--input", "csi://0", "--events", "/home/operator/events.jsonl",
                                "--snapshots", "/etc/../root/snaps", "--metrics", "edge_ad.prom",
                                "--samples", "/usr/local/share/good"], capsys)
    assert code == 2 and unit == ""
    assert "--events /home/operator/events.jsonl: the service sees /home read-only" in err
    assert "--snapshots /etc/../root/snaps: the service sees /root read-only (the unit's ProtectHome), and its " \
           "user may not enter others' homes" in err
    assert "--samples /usr/local/share/good: the service sees /usr read-only (the unit's ProtectSystem): put it" in err
    assert "edge_ad.prom" not in err  # in this folder, which the unit works in
    (tmp_path / "cams.yaml").write_text("sources:\n  - input: rtsp://10.0.0.5/s\n    output: /home/operator/line1/\n"
                                        "    calibration: /root/line1\n")
    code, unit, err = _service(["run", "--sources", "cams.yaml"], capsys)
    assert code == 2 and "cams.yaml: output /home/operator/line1/: the service sees /home read-only" in err
    assert "cams.yaml: calibration /root/line1: the service sees /root read-only" in err
    odd = tmp_path / "line\nUser=root"  # would have been a line of the unit's own
    odd.mkdir()
    monkeypatch.chdir(odd)
    code, unit, err = _service(["run", "--input", "csi://0"], capsys)
    assert code == 2 and unit == "" and "has a control character in its name" in err


def test_a_command_line_that_ends_by_itself_is_refused(tmp_path, monkeypatch, capsys):
    """Tried in a shell, a run over folders or videos ends with them, as --max-frames and
    --print-pipeline make it end: as a service it would end at boot and stay stopped (the unit
    restarts a run that fails, not one that ends)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parts").mkdir()
    (tmp_path / "line.mp4").write_bytes(b"")
    code, unit, err = _service(["run", "--input", "parts", "--input", "line.mp4", "--input", "/dev/video0",
                                "--max-frames", "100", "--print-pipeline"], capsys)
    assert code == 2 and unit == ""
    assert "--print-pipeline: the run prints its pipelines and ends" in err
    assert "--max-frames 100: the run ends after 100 frames of each source, and the service would stay stopped" in err
    assert "--input parts" not in err and "line.mp4" not in err  # a camera goes on after them: the run too
    code, unit, err = _service(["run", "--input", "parts", "--input", f"file://{tmp_path}/line.mp4", "--input",
                                "shots/*.png"], capsys)
    assert code == 2 and unit == ""
    assert "--input parts: the run ends with its last picture, and the service would stay stopped until the next " \
           "boot (systemd restarts a run that fails, not one that ends): --follow scores the pictures" in err
    assert "--input shots/*.png: the run ends with its last picture" in err
    assert f"--input file://{tmp_path}/line.mp4: the run ends with the video, and the service would stay stopped " \
           "until the next boot (systemd restarts a run that fails, not one that ends): --input-loop -1 plays it " \
           "for ever" in err
    (tmp_path / "cams.yaml").write_text("sources:\n  - input: parts\n  - input: line.mp4\n    loop: 2\n")
    code, unit, err = _service(["run", "--sources", "cams.yaml"], capsys)
    assert code == 2 and "cams.yaml: input line.mp4: the run ends with the video, and the service would stay " \
        "stopped until the next boot (systemd restarts a run that fails, not one that ends): loop: -1 plays it for " \
        "ever" in err
    (tmp_path / "cams.yaml").write_text("sources:\n  - input: parts\n    follow: true\n  - input: line.mp4\n")
    for going_on in (["--input", "parts", "--follow"], ["--input", "line.mp4", "--input-loop", "-1"],
                     ["--input", "line.mp4", "--input", "rtsp://10.0.0.5/s"], ["--sources", "cams.yaml"]):
        code, unit, err = _service(["run", *going_on], capsys)
        assert code == 0 and setting(unit, "ExecStart"), err


def test_a_command_line_that_is_not_a_run_is_refused(capsys):
    code, unit, err = _service(["calibrate", "--bundle", "b", "--input", "csi://0"], capsys)
    assert code == 2 and unit == "" and "give the run's command line after service" in err
    code, unit, err = _service(["run", "--input", "csi://0", "--event", "e.jsonl"], capsys)
    assert code == 2 and unit == "" and "unrecognized arguments: --event" in err
    for run, said in ((["--sources", "/nowhere/cams.yaml"], "/nowhere/cams.yaml: No such file or directory"),
                      (["--input", "csi://0", "--input", "csi://1", "--output", "a.mp4"],
                       "--output: give one per --input (2), got 1")):  # as run says them, before boot
        code, unit, err = _service(["run", *run], capsys)
        assert code == 2 and unit == "" and said in err


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze here")
def test_systemd_finds_nothing_wrong_with_the_unit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, unit, err = _service(["run", "--input", "test://ball", "--output", "out/%05d.jpg"], capsys)
    assert code == 0, err
    path = tmp_path / "edge-ad.service"
    path.write_text(unit)
    check_with_systemd(path)
