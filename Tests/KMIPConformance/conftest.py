# Fixtures for the PyKMIP suite against kmsd's KMIP listener. ci/kmip-conformance starts kmsd (a fresh SoftHSM token,
# the dev PKI) and sets KMSD_KMIP_DIR (the dev-init directory: ca.pem, node.pem, admin.pem …) and KMSD_KMIP_PORT.
import os
import socket
import ssl
import struct

import pytest
from kmip.core import enums, utils
from kmip.core.messages import messages
from kmip.pie.client import ProxyKmipClient
from kmip.services.kmip_client import KMIPProxy

DIR = os.environ.get("KMSD_KMIP_DIR", "")
PORT = int(os.environ.get("KMSD_KMIP_PORT", "0"))
VERSIONS = {
    "1.0": enums.KMIPVersion.KMIP_1_0,
    "1.2": enums.KMIPVersion.KMIP_1_2,
    "1.4": enums.KMIPVersion.KMIP_1_4,
}

if not DIR or not PORT:
    raise pytest.UsageError("run through ci/kmip-conformance (KMSD_KMIP_DIR and KMSD_KMIP_PORT unset)")


def path(name):
    return os.path.join(DIR, name)


def proxy(version="1.4", cert="node"):
    """PyKMIP's low-level client (KMIPProxy), connected with the named dev certificate."""
    p = KMIPProxy(host="127.0.0.1", port=PORT, certfile=path(f"{cert}.pem"), keyfile=path(f"{cert}-key.pem"),
                  ca_certs=path("ca.pem"), cert_reqs="CERT_REQUIRED", ssl_version="PROTOCOL_SSLv23",
                  config_file=os.devnull, kmip_version=VERSIONS[version])
    p.open()
    return p


def client(version="1.4", cert="node"):
    """PyKMIP's high-level client (ProxyKmipClient)."""
    c = ProxyKmipClient(hostname="127.0.0.1", port=PORT, cert=path(f"{cert}.pem"), key=path(f"{cert}-key.pem"),
                        ca=path("ca.pem"), ssl_version="PROTOCOL_SSLv23", config_file=os.devnull,
                        kmip_version=VERSIONS[version])
    c.open()
    return c


@pytest.fixture(params=list(VERSIONS))
def version(request):
    return request.param


def tls_socket(cert="node", key=None, ca=None):
    """A raw TLS connection to the listener (certificate files by path or dev name; None: no client certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca or path("ca.pem"))
    if cert:
        certfile = cert if os.path.isabs(cert) else path(f"{cert}.pem")
        keyfile = key or path(f"{cert}-key.pem")
        context.load_cert_chain(certfile, keyfile)
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", PORT), timeout=10))
    return sock


def read_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def exchange(sock, request_bytes):
    """Sends raw bytes; reads one response message and decodes it with PyKMIP's own decoder."""
    sock.sendall(request_bytes)
    header = read_exactly(sock, 8)
    length = struct.unpack(">I", header[4:8])[0]
    body = read_exactly(sock, length)
    response = messages.ResponseMessage()
    response.read(utils.BytearrayStream(header + body))
    return response
