# The protocol itself: version negotiation, Query, batches, malformed TTLV, and who may connect.
import os
import ssl
import struct
import subprocess

import pytest
from kmip.core import enums
from kmip.core.enums import QueryFunction, ResultReason, ResultStatus
from kmip.core.messages import contents, messages, payloads
from kmip.core import utils

from conftest import DIR, PORT, exchange, path, proxy, tls_socket


def test_discover_versions_lists_1_4_to_1_0(version):
    p = proxy(version)
    try:
        result = p.discover_versions()
        assert result.result_status.value == ResultStatus.SUCCESS
        assert [str(v) for v in result.protocol_versions] == ["1.4", "1.3", "1.2", "1.1", "1.0"]
        # A client that offers some versions gets the ones both speak, kmsd's preference first.
        offered = [contents.ProtocolVersion(1, 2), contents.ProtocolVersion(1, 0), contents.ProtocolVersion(2, 0)]
        result = p.discover_versions(protocol_versions=offered)
        assert [str(v) for v in result.protocol_versions] == ["1.2", "1.0"]
    finally:
        p.close()


def test_query_names_what_kmsd_offers(version):
    p = proxy(version)
    try:
        result = p.query(query_functions=[QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS,
                                          QueryFunction.QUERY_SERVER_INFORMATION])
        assert result.result_status.value == ResultStatus.SUCCESS
        assert enums.Operation.QUERY in result.operations
        assert enums.Operation.DISCOVER_VERSIONS in result.operations
        assert result.vendor_identification.startswith("kmsd ")
    finally:
        p.close()


def request(batch, version=(1, 4), **header):
    """A request message from PyKMIP's own message classes."""
    items = []
    for index, (operation, payload) in enumerate(batch):
        items.append(messages.RequestBatchItem(
            operation=contents.Operation(operation),
            unique_batch_item_id=contents.UniqueBatchItemID(bytes([index + 1])) if len(batch) > 1 else None,
            request_payload=payload))
    message = messages.RequestMessage(
        request_header=messages.RequestHeader(
            protocol_version=contents.ProtocolVersion(*version),
            batch_count=contents.BatchCount(len(items)), **header),
        batch_items=items)
    stream = utils.BytearrayStream()
    message.write(stream, kmip_version=enums.KMIPVersion.KMIP_1_4)
    return bytes(stream.buffer)


def test_a_batch_answers_each_item_with_its_id():
    batch = [
        (enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload()),
        (enums.Operation.QUERY, payloads.QueryRequestPayload(query_functions=[QueryFunction.QUERY_SERVER_INFORMATION])),
        (enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload([contents.ProtocolVersion(1, 1)])),
    ]
    with tls_socket() as sock:
        response = exchange(sock, request(batch))
    assert response.response_header.batch_count.value == 3
    assert [item.unique_batch_item_id.value for item in response.batch_items] == [b"\x01", b"\x02", b"\x03"]
    assert all(item.result_status.value == ResultStatus.SUCCESS for item in response.batch_items)
    assert [str(v) for v in response.batch_items[2].response_payload.protocol_versions] == ["1.1"]


def test_a_batch_stops_at_the_first_failure_unless_told_to_continue():
    # Create Key Pair is an operation kmsd does not offer.
    batch = [
        (enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload()),
        (enums.Operation.CREATE_KEY_PAIR, payloads.CreateKeyPairRequestPayload()),
        (enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload()),
    ]
    with tls_socket() as sock:
        stopped = exchange(sock, request(batch))
        continued = exchange(sock, request(batch, batch_error_cont_option=contents.BatchErrorContinuationOption(
            enums.BatchErrorContinuationOption.CONTINUE)))
    assert [item.result_status.value for item in stopped.batch_items] == [ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED]
    assert stopped.batch_items[1].result_reason.value == ResultReason.OPERATION_NOT_SUPPORTED
    assert [item.result_status.value for item in continued.batch_items] == [
        ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS]


def test_kmip_2_is_refused_as_an_invalid_message():
    with tls_socket() as sock:
        response = exchange(sock, request([(enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload())],
                                          version=(2, 0)))
    item = response.batch_items[0]
    assert item.result_status.value == ResultStatus.OPERATION_FAILED
    assert item.result_reason.value == ResultReason.INVALID_MESSAGE


GOOD = request([(enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload())])


def nested(depth):
    body = b""
    for _ in range(depth):
        body = b"\x42\x00\x79\x01" + struct.pack(">I", len(body)) + body
    return body


def with_length(message, length):
    return message[:4] + struct.pack(">I", length) + message[8:]


def patched(message, offset, replacement):
    return message[:offset] + replacement + message[offset + len(replacement):]


# GOOD begins: Request Message header (bytes 0-7), Request Header header (8-15), Protocol Version header (16-23),
# Protocol Version Major: tag and type (24-27), length (28-31), value (32-35), padding (36-39).
# Each malformed message, the reason kmsd must answer it with, and whether the connection survives it (a message
# whose header frames it survives; one whose header cannot be framed ends the connection after the answer).
MALFORMED = {
    "truncated": (with_length(GOOD[:-8], len(GOOD) - 16), ResultReason.INVALID_MESSAGE, True),
    "wrong length": (patched(GOOD, 28, b"\x00\x00\x00\x08"), ResultReason.INVALID_MESSAGE, True),
    "bad padding": (patched(GOOD, 39, b"\x01"), ResultReason.INVALID_MESSAGE, True),
    "nesting too deep": (b"\x42\x00\x78\x01" + struct.pack(">I", len(nested(40))) + nested(40), ResultReason.INVALID_MESSAGE, True),
    "unknown tag": (patched(GOOD, 8, b"\x42\x0f\xff"), ResultReason.INVALID_FIELD, True),
    "not a request message": (patched(GOOD, 0, b"\x42\x00\x7b"), ResultReason.INVALID_MESSAGE, True),
    "length not a multiple of 8": (with_length(GOOD, len(GOOD) - 12), ResultReason.INVALID_MESSAGE, False),
    "over the size limit": (b"\x42\x00\x78\x01\x7f\xff\xff\xf8", ResultReason.INVALID_MESSAGE, False),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_ttlv_is_answered_with_an_error_and_the_listener_still_serves(name):
    data, reason, survives = MALFORMED[name]
    with tls_socket() as sock:
        response = exchange(sock, data)
        item = response.batch_items[0]
        assert item.result_status.value == ResultStatus.OPERATION_FAILED
        assert item.result_reason.value == reason, item.result_message
        if survives:
            assert exchange(sock, GOOD).batch_items[0].result_status.value == ResultStatus.SUCCESS
        else:
            sock.settimeout(5)
            assert sock.recv(1) == b""
    with tls_socket() as sock:
        assert exchange(sock, GOOD).batch_items[0].result_status.value == ResultStatus.SUCCESS


def test_no_client_certificate_is_refused():
    with tls_socket() as sock:  # the same listener answers a client that presents one
        assert exchange(sock, GOOD).batch_items[0].result_status.value == ResultStatus.SUCCESS
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
        with tls_socket(cert=None) as sock:
            exchange(sock, GOOD)


def test_a_certificate_from_another_ca_is_refused(tmp_path):
    key = tmp_path / "key.pem"
    cert = tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=stranger",
                    "-addext", "subjectAltName=URI:spiffe://kmsd.dev/storage/node-1"],
                   check=True, capture_output=True)
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
        with tls_socket(cert=str(cert), key=str(key)) as sock:
            exchange(sock, GOOD)


def test_an_identity_outside_kmip_allow_is_denied_once_per_message():
    # The admin certificate comes from the same CA, but its identity (cn:security-admin) is not in kmip.allow.
    with tls_socket(cert="admin") as sock:
        response = exchange(sock, GOOD)
        item = response.batch_items[0]
        assert item.result_status.value == ResultStatus.OPERATION_FAILED
        assert item.result_reason.value == ResultReason.PERMISSION_DENIED
        # A batch asking to continue past failures still gets one refusal: each item would only add a refusal record.
        batch = [(enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload())] * 3
        response = exchange(sock, request(batch, batch_error_cont_option=contents.BatchErrorContinuationOption(
            enums.BatchErrorContinuationOption.CONTINUE)))
        assert len(response.batch_items) == 1 and response.batch_items[0].result_reason.value == ResultReason.PERMISSION_DENIED


def test_a_message_holds_at_most_64_batch_items():
    batch = [(enums.Operation.DISCOVER_VERSIONS, payloads.DiscoverVersionsRequestPayload())] * 65
    with tls_socket() as sock:
        response = exchange(sock, request(batch))
        assert response.batch_items[0].result_reason.value == ResultReason.INVALID_MESSAGE
        assert len(exchange(sock, request(batch[:64])).batch_items) == 64
