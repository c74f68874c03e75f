# The listener's deadlines and caps, the API listener's (ci/kmip-conformance sets limits: handshake_timeout 2s,
# idle_timeout 10s, max_unauthenticated_per_source 4).
import socket
import time

from kmip.core.enums import ResultStatus

from conftest import PORT, exchange, tls_socket
from test_protocol import GOOD

HANDSHAKE_TIMEOUT = 2.0
IDLE_TIMEOUT = 10.0


def closed_within(sock, seconds):
    """Seconds until the peer closed `sock` (reading nothing), or None if it stayed open for `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(1024)
            if not data:
                return time.monotonic() - started
    except socket.timeout:
        return None
    except (ConnectionError, OSError):
        return time.monotonic() - started


def test_a_peer_that_never_starts_tls_is_closed_at_the_handshake_deadline():
    with socket.create_connection(("127.0.0.1", PORT)) as sock:
        elapsed = closed_within(sock, HANDSHAKE_TIMEOUT + 3)
    assert elapsed is not None and elapsed >= HANDSHAKE_TIMEOUT - 0.2


def test_an_idle_connection_is_closed_at_the_idle_deadline():
    with tls_socket() as sock:
        exchange(sock, GOOD)
        elapsed = closed_within(sock, IDLE_TIMEOUT + 3)
    assert elapsed is not None and elapsed >= IDLE_TIMEOUT - 0.2


def test_a_message_trickled_in_is_closed_at_its_deadline():
    # One byte every half second never lets the connection go idle; the message must still arrive whole within the
    # idle deadline of its first byte.
    with tls_socket() as sock:
        started = time.monotonic()
        closed = False
        for byte in GOOD:
            try:
                sock.sendall(bytes([byte]))
            except (ConnectionError, OSError):
                closed = True
                break
            if closed_within(sock, 0.5) is not None:
                closed = True
                break
        assert closed, "the listener waited for a message trickled in over %.1f s" % (time.monotonic() - started)
        assert time.monotonic() - started < IDLE_TIMEOUT + 2


def test_unauthenticated_connections_are_capped_per_source_and_their_slots_free_up_when_they_close():
    held = [socket.create_connection(("127.0.0.1", PORT)) for _ in range(4)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", PORT)) as extra:
            # Refused at once, well before the handshake deadline would have closed it.
            elapsed = closed_within(extra, HANDSHAKE_TIMEOUT)
            assert elapsed is not None and elapsed < HANDSHAKE_TIMEOUT / 2
    finally:
        for sock in held:
            sock.close()
    # The slots free up once kmsd has seen the closes: a node gets in again (and the tests after this one do).
    deadline = time.monotonic() + 15
    while True:
        try:
            with tls_socket() as sock:
                assert exchange(sock, GOOD).batch_items[0].result_status.value == ResultStatus.SUCCESS
            break
        except (ConnectionError, EOFError, OSError):
            assert time.monotonic() < deadline, "the slots of closed unauthenticated connections were not freed"
            time.sleep(0.2)
