"""What a SCADA sees of `edge-ad run --opcua-port`: each source's variables, then for SECONDS its
alarms, each acknowledged as a SCADA acknowledges them (False written to its AlarmLatch). With
USER (the run's --opcua-user, its password in EDGE_AD_OPCUA_PASSWORD), signed and encrypted,
with a certificate of its own, made in ./opcua-client/ the first time: with --opcua-trust, that
first attempt is refused, and the run's log names the file to move into the trust folder. To
check the OPC UA wiring and the variables (README) before the SCADA is set up. Needs asyncua
(pip install 'edge-ad[opcua]').

    python examples/scada_opcua.py HOST[:PORT] [SECONDS] [USER]
"""

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from asyncua import ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.sync import Client
from cryptography.x509.oid import ExtendedKeyUsageOID

URI = "urn:edge-ad-example"  # the application URI its certificate names, as OPC UA asks of a client
SHOWN = ("Frames", "Score", "Threshold", "Alarm", "Variant", "CalibrationState")

if not 2 <= len(sys.argv) <= 4:
    sys.exit(__doc__)
host, _, port = sys.argv[1].partition(":")
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
user = sys.argv[3] if len(sys.argv) > 3 else None

logging.getLogger("asyncua").setLevel(logging.ERROR)  # its word on the session's timeout, which the server sets
client = Client(f"opc.tcp://{host}:{port or 4840}/edge-ad/", timeout=10)
if user is not None:
    key, certificate = Path("opcua-client/key.pem"), Path("opcua-client/certificate.der")
    key.parent.mkdir(exist_ok=True)
    asyncio.run(setup_self_signed_certificate(key, certificate, URI, "edge-ad-example",
                                              [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "edge-ad example"}))
    client.application_uri = URI
    client.set_security(SecurityPolicyBasic256Sha256, str(certificate), str(key),
                        mode=ua.MessageSecurityMode.SignAndEncrypt)
    client.set_user(user)
    client.set_password(os.environ.get("EDGE_AD_OPCUA_PASSWORD", ""))


def watch() -> None:
    ns = client.get_namespace_index("urn:edge-ad")
    sources = [node.read_browse_name().Name for node in client.nodes.objects.get_child(f"{ns}:edge-ad").get_children()]

    def nodes(source: str, *names: str) -> list:
        return [client.get_node(f"ns={ns};s={source}.{name}") for name in names]

    for source in sources:
        values = client.read_values(nodes(source, *SHOWN))
        print(f"{source}: " + "  ".join(f"{name} {value}" for name, value in zip(SHOWN, values)))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for source, latched in zip(sources, client.read_values([nodes(s, "AlarmLatch")[0] for s in sources])):
            if latched:
                frame, score, threshold = client.read_values(nodes(source, "FrameNumber", "Score", "Threshold"))
                print(f"{source}: ALARM  frame {frame}  score {score:.3f} (threshold {threshold:.3f})")
                try:
                    nodes(source, "AlarmLatch")[0].write_value(False)  # acknowledged: it waits for the next alarm
                except ua.UaStatusCodeError as exc:  # a reader's login (--opcua-reader)
                    sys.exit(f"{source}: its alarm could not be acknowledged ({exc})")
        time.sleep(0.1)  # a SCADA's poll cycle


try:
    with client:  # disconnected at the end, and on a refusal (its thread would keep this script from ending)
        watch()
except ua.UaStatusCodeError as exc:  # an untrusted certificate, a wrong password
    untrusted = exc.code == ua.StatusCodes.BadCertificateUntrusted
    sys.exit(f"{sys.argv[1]}: refused ({exc})" + ("; the run's log names the file to move into its --opcua-trust "
                                                  "folder" if untrusted else ""))
except OSError as exc:
    sys.exit(f"{sys.argv[1]}: no OPC UA server answers there ({exc}; edge-ad run --opcua-port PORT)")
