"""Errors that the CLI prints as one line: each names the input and what is wrong."""

from __future__ import annotations

import errno
import re
import sys
from collections.abc import Callable
from urllib.parse import urlparse

# scheme://user:password@host: the password runs to the last @ before the path (some hold an @)
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*):[^\s/'\"]*@")


def without_passwords(text: str) -> str:
    """`text` with the password of every URI in it (scheme://user:password@host) written as ***.
    Cameras take theirs in the URI (rtsp://admin:...@10.0.0.5/...), and a source is named by its
    URI: its name goes to logs, events, snapshot names, MQTT, metrics and calibration files."""
    return _PASSWORD.sub(r"\1:***@", text)


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


def report_errors(program: str, run: Callable[[], object]) -> int:
    """Run a command and return its exit code. An error meant for the user (EdgeAdError, a missing
    optional package, a file-system error) becomes one line `<program>: error: <what>` on stderr
    and exit code 2, not a traceback; Ctrl-C exits with 130. Every edge-ad command and benchmark
    script ends this way."""
    try:
        run()
    except EdgeAdError as exc:
        print(f"{program}: error: {without_passwords(str(exc))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"{program}: error: needs the Python package '{exc.name}', which is not installed "
              "(pip install the extra that has it: 'edge-ad[train]' for torch and ONNX, "
              "'edge-ad[gst]' for GStreamer, 'edge-ad[data]' for ELPV, 'edge-ad[tensorrt]' for TensorRT, "
              "'edge-ad[mqtt]' for MQTT)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    return 0


def uri_port(uri: str) -> int | None:
    """The port a camera's, stream's, output's or broker's URI names (None: none). urllib raises a
    bare ValueError for a port that is no number or above 65535, which ended the command with a
    traceback; this names the URI."""
    try:
        return urlparse(uri).port
    except ValueError as exc:
        raise SourceError(f"{without_passwords(uri)}: the port is not a number from 0 to 65535") from exc


def listen_reason(exc: OSError) -> str:
    """Why a server could not listen on a port, in the system's words ("Address already in use";
    asyncio's "error while attempting to bind on address (...)" left out), and for a port that
    this user may not take, what may."""
    reason = (exc.strerror or str(exc)).rpartition(": ")[2]
    return reason + ("; ports below 1024 need root or CAP_NET_BIND_SERVICE" if exc.errno == errno.EACCES else "")
