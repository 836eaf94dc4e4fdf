"""HTTP digest logins to cameras (ONVIF services, snapshot URLs): urllib's handler, with RFC 7616's
SHA-256 beside MD5. Python 3.11's urllib knows MD5 and SHA-1 only and answers the first challenge
a camera sends, so a camera whose firmware asks for SHA-256 first would be refused with urllib's
"Unsupported digest authentication algorithm"."""

from __future__ import annotations

import hashlib
import urllib.request
from typing import Callable


class DigestAuthHandler(urllib.request.HTTPDigestAuthHandler):
    """urllib.request.HTTPDigestAuthHandler, answering SHA-256 challenges too."""

    def get_algorithm_impls(self, algorithm: str) -> tuple[Callable[[str], str], Callable[[str, str], str]]:
        if algorithm.upper() != "SHA-256":
            return super().get_algorithm_impls(algorithm)

        def digest(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()

        return digest, lambda secret, data: digest(f"{secret}:{data}")
