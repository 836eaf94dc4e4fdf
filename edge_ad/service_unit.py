"""`edge-ad service run ARGS`: the systemd unit (edge-ad.service beside this module) for a run
command line that was tried in a shell.

A command line copied into a unit by hand goes wrong in ways that only show at boot, in the
journal: systemd reads `%` as its own specifiers (`--output out/%05d.jpg` fails to load) and `$`
as a variable, quotes differently from a shell, and the unit is readable by every user of the
device, `systemctl show` included, so a camera's password in a URL would be given away. The
service's sandbox also sees /home, /root, /usr and /etc read-only, where a run tried in a shell
may have written its events. And a run that ends by itself there (a folder read once,
--max-frames) leaves the service stopped until the next boot: the unit restarts a run that fails.
"""

from __future__ import annotations

import argparse
import pwd
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import EdgeAdError, without_passwords
from .mqtt import PASSWORD_VARIABLE as MQTT_PASSWORD_VARIABLE
from .mqtt import parse_mqtt_url
from .opcua import PASSWORD_VARIABLE as OPCUA_PASSWORD_VARIABLE
from .opcua import READER_PASSWORD_VARIABLE as OPCUA_READER_PASSWORD_VARIABLE
from .output_access import OUTPUT_PASSWORD_VARIABLE
from .pipelines import local_path, opencv_input
from .streams import Stream
from .variants import parse_variants

UNIT_TEMPLATE = Path(__file__).with_name("edge-ad.service")
INSTALLED_UNIT = Path("/etc/systemd/system/edge-ad.service")
# What the unit's ProtectSystem=full and ProtectHome=read-only leave the run unable to write.
READ_ONLY = {Path("/usr"): "ProtectSystem", Path("/boot"): "ProtectSystem", Path("/efi"): "ProtectSystem",
             Path("/etc"): "ProtectSystem", Path("/home"): "ProtectHome", Path("/root"): "ProtectHome",
             Path("/run/user"): "ProtectHome"}
_PLAIN_WORD = re.compile(r"[\w@%+=:,./-]+", re.ASCII)  # what systemd reads as it is written
_PIPELINE_PASSWORD = re.compile(r"\b(user-pw=)[^\s!]+")  # rtspsrc's and souphttpsrc's property
_LINE_WIDTH = 100


def exec_word(word: str) -> str:
    """`word` as one item of an ExecStart= line: `%` and `$` doubled (systemd's specifiers and
    variables), quoted with C escapes where it holds anything else (systemd.syntax(7))."""
    text = word.replace("%", "%%").replace("$", "$$")
    if _PLAIN_WORD.fullmatch(word):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in escaped)
    return f'"{escaped}"'


def exec_line(argv: Sequence[str]) -> str:
    """`ExecStart=` for `argv`, folded onto continuation lines of about 100 characters, each
    option with its value."""
    chunks: list[str] = []
    for word in map(exec_word, argv):
        if chunks and not word.startswith("--"):
            chunks[-1] += " " + word
        else:
            chunks.append(word)
    lines, line = [], "ExecStart=" + chunks[0]
    for chunk in chunks[1:]:
        if len(line) + 1 + len(chunk) > _LINE_WIDTH:
            lines.append(line + " \\")
            line = "    " + chunk
        else:
            line += " " + chunk
    return "\n".join([*lines, line])


def edge_ad_command() -> list[str]:
    """How the service starts this installation's edge-ad: the script beside its Python (a
    venv's bin/), else that Python with -m edge_ad."""
    script = Path(sys.executable).parent / "edge-ad"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edge_ad"]


def _written_paths(run: argparse.Namespace, streams: Sequence[Stream]) -> Iterable[tuple[str, str]]:
    """(option, path) of what the run writes into: its files and folders, and each bundle folder
    (the line's own calibration), on the command line and in a --sources file (its `streams`)."""
    for option in ("events", "snapshots", "samples", "metrics", "opcua_trust"):
        if getattr(run, option):
            yield "--" + option.replace("_", "-"), getattr(run, option)
    for output in run.output or []:
        if "://" not in output:
            yield "--output", output
    for path in parse_variants(run.bundle or []).values():
        if path.is_dir():
            yield "--bundle", str(path)
    for stream in streams if run.sources else []:
        if stream.output and "://" not in stream.output:
            yield f"{run.sources}: output", stream.output
        for path in parse_variants(stream.bundle or []).values():
            if path.is_dir():
                yield f"{run.sources}: bundle", str(path)
        if stream.calibration:
            yield f"{run.sources}: calibration", stream.calibration


STAYS_STOPPED = ("and the service would stay stopped until the next boot (systemd restarts a run that fails, not one "
                 "that ends)")


def _endings(run: argparse.Namespace, streams: Sequence[Stream]) -> Iterable[str]:
    """What would make the run end by itself, tried in a shell: the unit restarts a run that
    fails (Restart=on-failure), not one that ends well, so the service would stay stopped until
    the next boot. A run ends when all its sources (`streams`) have."""
    if run.print_pipeline:
        yield "--print-pipeline: the run prints its pipelines and ends: try it in a shell, and leave it out of the unit"
    if run.max_frames:
        yield (f"--max-frames {run.max_frames}: the run ends after {run.max_frames} frames of each source, "
               f"{STAYS_STOPPED}: leave it out")
    endings = [_ending(stream, run.sources) for stream in streams]
    if endings and all(endings):
        yield from endings


def _ending(stream: Stream, sources: str | None) -> str | None:
    """Why `stream` (given by --input, or in the --sources file `sources`) ends (a video,
    pictures), None for a camera, a stream or a pipeline (which may end or not)."""
    uri = stream.input
    if stream.pipeline or stream.options.follow or stream.options.loop == -1:
        return None
    given, follow, loop = (f"{sources}: input", "follow: true", "loop: -1") if sources else \
        ("--input", "--follow", "--input-loop -1")
    if opencv_input(uri):  # a folder, a picture, a wildcard: read as the run reads them
        return (f"{given} {uri}: the run ends with its last picture, {STAYS_STOPPED}: {follow} scores the pictures "
                f"the line writes there as they come, {loop} reads them again and again")
    if local_path(uri).is_file():  # a video (a device, /dev/video0, is not a file)
        return f"{given} {uri}: the run ends with the video, {STAYS_STOPPED}: {loop} plays it for ever"
    return None


def check_run(argv: Sequence[str], run: argparse.Namespace, cwd: Path, streams: Sequence[Stream]) -> None:
    """Refuse what would fail, or give a secret away, once the run is a service: a working folder
    whose name the unit cannot hold, a command line that ends by itself (its sources: `streams`),
    a password in it, and files or folders it writes where the unit's sandbox makes them
    read-only."""
    problems = list(_endings(run, streams))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in str(cwd)):  # a newline would start a line of the unit's own
        problems.append(f"{ascii(str(cwd))}: the folder this runs in has a control character in its name, which the "
                        "unit's WorkingDirectory cannot hold: run edge-ad service from another folder")
    shown = [without_passwords(_PIPELINE_PASSWORD.sub(r"\1***", word)) for word in argv]
    secrets = [hidden for hidden, word in zip(shown, argv) if hidden != word]
    if secrets:
        problems.append(f"{', '.join(secrets)}: a password on the command line would be in the unit, which every "
                        "user of this device may read (systemctl show prints it): give cameras in a --sources file "
                        "(edge-ad cameras --sources writes one readable by its owner only), --mqtt's in "
                        f"{MQTT_PASSWORD_VARIABLE} (the unit's EnvironmentFile)")
    for option, path in _written_paths(run, streams):
        absolute = (cwd / path).resolve()
        inside = next((top for top in READ_ONLY if absolute.is_relative_to(top)), None)
        if inside is not None:
            homes = ", and its user may not enter others' homes" if READ_ONLY[inside] == "ProtectHome" else ""
            problems.append(f"{option} {path}: the service sees {inside} read-only (the unit's {READ_ONLY[inside]})"
                            f"{homes}: put it under /var/lib/edge-ad, the service's own folder, or /opt/edge-ad")
    if problems:
        raise EdgeAdError("the run as a service:\n  " + "\n  ".join(problems))


def secret_variables(run: argparse.Namespace) -> list[str]:
    """The password variables the run reads from its environment: the unit's EnvironmentFile."""
    needed = {OUTPUT_PASSWORD_VARIABLE: run.output_user, OPCUA_PASSWORD_VARIABLE: run.opcua_user,
              OPCUA_READER_PASSWORD_VARIABLE: run.opcua_reader,
              MQTT_PASSWORD_VARIABLE: run.mqtt and parse_mqtt_url(run.mqtt).user}
    return [variable for variable, wanted in needed.items() if wanted]


_EXEC_START = re.compile(r"^ExecStart=((?:.*\\\n)*.*)$", re.M)  # with its continuation lines
_EXEC_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')


def unit_files(unit: Path) -> list[Path]:
    """The unit and its drop-ins (`edge-ad.service.d/*.conf`: `systemctl edit edge-ad` writes
    override.conf there), in the order systemd reads them, by name: a drop-in's setting overrides
    the unit's, and an empty `ExecStart=` in it drops the unit's before its own."""
    return [unit, *sorted(unit.with_name(f"{unit.name}.d").glob("*.conf"))]


def sets_exec_start(text: str) -> bool:
    """Whether a unit file's text has an `ExecStart=` line: in a drop-in, an empty one too drops the
    unit's line (and, with no other after it, leaves the service none to run)."""
    return _EXEC_START.search(text) is not None


def started_words(unit_text: str) -> list[str]:
    """The words of the last ExecStart= of the unit's text (with its drop-ins' after it) as
    `exec_line` writes them (continuation lines, quotes, C escapes, doubled % and $), its prefixes
    (`-`, `@`, ...) left out; [] without one, or where the last is empty (a drop-in's reset)."""
    found = list(_EXEC_START.finditer(unit_text))
    if not found:
        return []
    line = re.sub(r"^\s*[-@:+!]*", "", found[-1].group(1).replace("\\\n", " "))
    words = []
    for word in _EXEC_WORD.finditer(line):
        quoted, plain = word.groups()
        text = plain if quoted is None else re.sub(  # C escapes: \xNN, \\, \"
            r"\\(?:x([0-9a-fA-F]{2})|(.))", lambda m: chr(int(m[1], 16)) if m[1] else m[2], quoted)
        words.append(text.replace("%%", "%").replace("$$", "$"))
    return words


def unit_for(argv: Sequence[str], cwd: Path) -> str:
    """The unit's text with ExecStart running `edge-ad run ARGV` in `cwd` (its WorkingDirectory,
    so that the command line's relative paths mean what they meant in the shell)."""
    text = UNIT_TEMPLATE.read_text()
    text, started = _EXEC_START.subn(lambda _: exec_line([*edge_ad_command(), "run", *argv]), text, count=1)
    text, placed = re.subn(r"^WorkingDirectory=.*$", lambda _: "WorkingDirectory=" + str(cwd).replace("%", "%%"),
                           text, count=1, flags=re.M)
    if (started, placed) != (1, 1):  # the template is this package's own file
        raise EdgeAdError(f"{UNIT_TEMPLATE}: no ExecStart= or WorkingDirectory= line to fill in")
    return text


def setting(text: str, key: str) -> str | None:
    """The value of a unit's last `key=` line, as systemd takes it where a drop-in sets it again
    (None without one, or where the last is empty: back to systemd's default)."""
    values = re.findall(rf"^{key}=(.*)$", text, re.M)
    return (values[-1].strip() or None) if values else None


def add_user(name: str) -> str:
    """The command that makes the service's user: a system user at home in the service's state
    folder, in the group video (a Jetson's GPU and cameras)."""
    return f"sudo useradd --system --home-dir /var/lib/edge-ad --groups video {name}"


def install_steps(run: argparse.Namespace) -> list[str]:
    """What to do with the unit `unit_for` wrote, on this device, in order."""
    template = UNIT_TEMPLATE.read_text()
    user = setting(template, "User") or "root"
    steps = [f"edge-ad service run ... | sudo tee {INSTALLED_UNIT}  (this unit)"]
    for drop_in in unit_files(INSTALLED_UNIT)[1:]:  # one from systemctl edit: its ExecStart= is taken, not this one's
        try:
            overrides = sets_exec_start(drop_in.read_text())
        except OSError:  # not readable here: systemd reads it, doctor says so
            continue
        if overrides:
            steps.append(f"sudoedit {drop_in}  (delete its ExecStart= lines: systemd takes them instead of this "
                         "unit's)")
    try:
        pwd.getpwnam(user)
    except KeyError:
        steps.append(add_user(user))
    variables = secret_variables(run)
    if variables:
        secrets = (setting(template, "EnvironmentFile") or "").lstrip("-")
        steps.append(f"sudo install -D -m 600 /dev/null {secrets}; sudoedit {secrets}  (the passwords: "
                     + ", ".join(f"{variable}=..." for variable in variables) + ")")
    checked = [*(word for spec in run.bundle or () for word in ("--bundle", spec)),
               *(["--sources", run.sources] if run.sources else [])]
    return [*steps, shlex.join(["edge-ad", "doctor", *checked]) + f"  (what {user}, the service's user, may not read "
            "or write yet)", "sudo systemctl daemon-reload && sudo systemctl enable --now edge-ad"]
