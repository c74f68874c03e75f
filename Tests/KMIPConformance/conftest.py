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


def pytest_collection_modifyitems(config, items):
    """Tests that take the HSM down run last: kmsd's reconnection backs off, and no other test should wait on it."""
    items.sort(key=lambda item: item.get_closest_marker("outage") is not None)


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


API_PORT = int(os.environ.get("KMSD_API_PORT", "0"))
SHIM_CONTROL = os.environ.get("KMSD_FAULT_SHIM_CONTROL", "")
STATE_FILE = os.path.join(DIR, "kmip-restart-state.json") if DIR else ""


def admin(method, path, body=None):
    """kmsd's admin API as the dev administrator; the decoded JSON reply and the HTTP status."""
    import http.client
    import json
    context = ssl.create_default_context(cafile=path_of("ca.pem"))
    context.load_cert_chain(path_of("admin.pem"), path_of("admin-key.pem"))
    connection = http.client.HTTPSConnection("localhost", API_PORT, context=context, timeout=30)
    connection.request(method, path, body=json.dumps(body) if body is not None else None)
    reply = connection.getresponse()
    data = reply.read()
    connection.close()
    return reply.status, (json.loads(data) if data else None)


def path_of(name):
    return os.path.join(DIR, name)


def fault(command):
    """Writes a fault-shim command ("down", or "" to clear); the shim applies it at its next call."""
    import uuid
    temporary = f"{SHIM_CONTROL}.{uuid.uuid4()}"
    with open(temporary, "w") as f:
        f.write(f"# {uuid.uuid4()}\n{command}\n")
    os.rename(temporary, SHIM_CONTROL)


def remember(key, value):
    """Keeps `value` for the after_restart phase."""
    import json
    state = {}
    if os.path.exists(STATE_FILE):
        with open(STATE_FILE) as f:
            state = json.load(f)
    state[key] = value
    with open(STATE_FILE, "w") as f:
        json.dump(state, f)


def recall(key):
    import json
    with open(STATE_FILE) as f:
        return json.load(f)[key]


# A small TTLV writer for requests PyKMIP has no class for (Add Attribute) and for hand-made batches: independent of
# kmsd's codec.
def ttlv(tag, kind, value):
    kinds = {"structure": 1, "integer": 2, "enumeration": 5, "boolean": 6, "text": 7, "bytes": 8, "datetime": 9, "interval": 10}
    if kind == "structure":
        body = b"".join(value)
    elif kind in ("integer", "enumeration", "interval"):
        body = struct.pack(">I", value & 0xFFFFFFFF)
    elif kind in ("boolean", "datetime"):
        body = struct.pack(">q", int(value))
    elif kind == "text":
        body = value.encode()
    else:
        body = bytes(value)
    padded = body + b"\0" * (-len(body) % 8)
    return struct.pack(">I", tag)[1:] + bytes([kinds[kind]]) + struct.pack(">I", len(body)) + padded


def raw_request(items, version=(1, 4), header=(), id_width=1):
    """A Request Message: items are (operation value, [payload fields]) pairs; `header` holds extra header fields
    (after the version, before Batch Count); batch item ids are `id_width` bytes, big-endian, from 1."""
    batch = []
    for index, (operation, fields) in enumerate(items):
        parts = [ttlv(0x42005C, "enumeration", operation)]
        if len(items) > 1:
            parts.append(ttlv(0x420093, "bytes", (index + 1).to_bytes(id_width, "big")))
        parts.append(ttlv(0x420079, "structure", fields))
        batch.append(ttlv(0x42000F, "structure", parts))
    header = ttlv(0x420077, "structure", [
        ttlv(0x420069, "structure", [ttlv(0x42006A, "integer", version[0]), ttlv(0x42006B, "integer", version[1])]),
        *header,
        ttlv(0x42000D, "integer", len(items)),
    ])
    return ttlv(0x420078, "structure", [header] + batch)


def attribute_field(name, kind, value):
    """An Attribute structure (KMIP 1.x) with `value` of `kind` as its Attribute Value."""
    return ttlv(0x420008, "structure", [ttlv(0x42000A, "text", name), ttlv(0x42000B, kind, value)])


def name_attribute(name):
    return ttlv(0x420008, "structure", [ttlv(0x42000A, "text", "Name"), ttlv(0x42000B, "structure", [
        ttlv(0x420055, "text", name), ttlv(0x420054, "enumeration", 1)])])


def payload_of(response, index=0):
    """The Response Payload of a parsed response's batch item (an empty list when it has none)."""
    item = find(response, 0x42000F)[index]
    payload = find(item, 0x42007C)
    return payload[0] if payload else (0x42007C, 1, [])


def values(item, tag):
    return [found[2] for found in find(item, tag)]


def call(request, version=None):
    """One request on a connection of its own (as pg_tde and MySQL's kmippp do); the parsed response, after checking
    that every item succeeded and that the response speaks the request's version."""
    with tls_socket() as sock:
        response = exchange_raw(sock, request)
    for index in range(len(find(response, 0x42000F))):
        status, reason, message = result_of(response, index)
        assert status == 0, f"item {index}: reason {reason}: {message}"
    if version is not None:
        assert values(response, 0x42006A)[0] == version[0] and values(response, 0x42006B)[0] == version[1]
    return response


def uid_field(uid):
    return ttlv(0x420094, "text", uid)


def parse_ttlv(data, offset=0):
    """A minimal TTLV reader (independent of kmsd's): (tag, type, value, next offset); structures hold lists."""
    tag = int.from_bytes(data[offset:offset + 3], "big")
    kind = data[offset + 3]
    length = struct.unpack(">I", data[offset + 4:offset + 8])[0]
    body = data[offset + 8:offset + 8 + length]
    end = offset + 8 + length + (-length % 8)
    if kind == 1:
        children, position = [], 0
        while position < length:
            child = parse_ttlv(body, position)
            children.append(child[:3])
            position = child[3]
        return tag, kind, children, end
    if kind in (2, 5, 10):
        return tag, kind, int.from_bytes(body[:4], "big"), end
    if kind in (3, 6, 9):
        return tag, kind, int.from_bytes(body[:8], "big", signed=True), end
    return tag, kind, body, end


def find(item, tag):
    """Every item with `tag` under `item` (a parsed TTLV), depth first."""
    found = []
    if item[0] == tag:
        found.append(item)
    if item[1] == 1:
        for child in item[2]:
            found += find(child, tag)
    return found


def exchange_raw(sock, request_bytes):
    """Sends raw bytes; the response message parsed by `parse_ttlv`."""
    sock.sendall(request_bytes)
    header = read_exactly(sock, 8)
    body = read_exactly(sock, struct.unpack(">I", header[4:8])[0])
    return parse_ttlv(header + body)[:3]


def result_of(response, index=0):
    """(Result Status, Result Reason or None, Result Message or None) of a parsed response's batch item."""
    item = find(response, 0x42000F)[index]
    status = find(item, 0x42007F)[0][2]
    reason = find(item, 0x42007E)
    message = find(item, 0x42007D)
    return status, reason[0][2] if reason else None, message[0][2].decode() if message else None
