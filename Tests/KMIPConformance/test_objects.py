# Managed objects over KMIP with PyKMIP's clients: every operation kmsd offers, in KMIP 1.0, 1.2 and 1.4, the
# lifecycle and its refusals, access between identities, the HSM down, the wrapping key rotating.
import os
import time
import uuid

import pytest
from kmip import enums
from kmip.core import enums as core_enums
from kmip.core.enums import ResultReason, ResultStatus
from kmip.core.messages import contents, payloads
from kmip.core import attributes as core_attributes
from kmip.core import objects as core_objects
from kmip.pie import objects
from kmip.pie.exceptions import KmipOperationFailure

from kmip.core.exceptions import OperationFailure

from conftest import admin, client, exchange, exchange_raw, fault, find, proxy, raw_request, remember, result_of, tls_socket, ttlv, uid_field

GCM = {"block_cipher_mode": enums.BlockCipherMode.GCM, "cryptographic_algorithm": enums.CryptographicAlgorithm.AES}


def refused(reason, call, *args, **kwargs):
    # The high-level client raises KmipOperationFailure; its calls that go through send_request_payload, OperationFailure.
    with pytest.raises((KmipOperationFailure, OperationFailure)) as failure:
        call(*args, **kwargs)
    message = getattr(failure.value, "message", str(failure.value))
    assert failure.value.reason == reason, message
    return message


def attribute(c, uid, name):
    """The attribute's value: a plain value for enumerations, integers and dates, PyKMIP's structure otherwise."""
    found = c.get_attributes(uid, [name])[1]
    if not found:
        return None
    value = found[0].attribute_value
    return value.value if hasattr(value, "value") else value


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_create_activate_get_and_attributes(version):
    c = client(version)
    try:
        name = unique("orders")
        uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=name)
        assert attribute(c, uid, "State") == enums.State.PRE_ACTIVE
        c.activate(uid)
        assert attribute(c, uid, "State") == enums.State.ACTIVE
        key = c.get(uid)
        assert key.cryptographic_algorithm == enums.CryptographicAlgorithm.AES and len(key.value) == 32
        assert c.get(uid).value == key.value
        names = c.get_attribute_list(uid)
        for expected in ("Unique Identifier", "Object Type", "Cryptographic Algorithm", "Cryptographic Length", "Name", "State",
                         "Initial Date", "Activation Date", "Last Change Date", "Cryptographic Usage Mask"):
            assert expected in names
        assert attribute(c, uid, "Cryptographic Length") == 256
        assert attribute(c, uid, "Name").name_value.value == name
        short = c.create(enums.CryptographicAlgorithm.AES, 128)
        assert len(c.get(short).value) == 16
        refused(ResultReason.INVALID_FIELD, c.create, enums.CryptographicAlgorithm.RSA, 2048)
        refused(ResultReason.INVALID_FIELD, c.create, enums.CryptographicAlgorithm.AES, 100)
    finally:
        c.close()


def test_register_symmetric_key_and_secret_data_returns_the_same_bytes(version):
    c = client(version)
    try:
        material = os.urandom(32)
        uid = c.register(objects.SymmetricKey(enums.CryptographicAlgorithm.AES, 256, material, name=unique("registered")))
        assert c.get(uid).value == material
        secret = c.register(objects.SecretData(b"correct horse", enums.SecretDataType.PASSWORD, name=unique("password")))
        got = c.get(secret)
        assert got.value == b"correct horse" and got.data_type == enums.SecretDataType.PASSWORD
        # The Transparent Symmetric Key format on request (PyKMIP cannot read it: a hand-made Get, read by our own reader).
        versions = {"1.0": (1, 0), "1.2": (1, 2), "1.4": (1, 4)}
        with tls_socket() as sock:
            response = exchange_raw(sock, raw_request([(0x0A, [uid_field(uid), ttlv(0x420042, "enumeration", 7)])], versions[version]))
        assert result_of(response)[0] == ResultStatus.SUCCESS.value
        assert find(response, 0x420042)[0][2] == 7
        assert find(find(response, 0x420043)[0], 0x42003F)[0][2] == material
        refused(ResultReason.INVALID_FIELD, c.register, objects.SymmetricKey(enums.CryptographicAlgorithm.AES, 160, os.urandom(20)))
    finally:
        c.close()


def test_locate_filters_and_pages(version):
    c = client(version)
    try:
        run = unique("run")
        created = []
        for index in range(5):
            uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=f"{run}-{index}")
            created.append(uid)
        for uid in created[:2]:
            c.activate(uid)
        factory = c.attribute_factory
        by_name = c.locate(attributes=[factory.create_attribute(enums.AttributeType.NAME, f"{run}-3")])
        assert by_name == [created[3]]
        everything = c.locate(attributes=[factory.create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY),
                                          factory.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM,
                                                                   enums.CryptographicAlgorithm.AES)])
        assert set(created) <= set(everything)
        active = c.locate(attributes=[factory.create_attribute(enums.AttributeType.STATE, enums.State.ACTIVE)])
        assert set(created[:2]) <= set(active) and not set(created[2:]) & set(active)
        # Oldest first (stable while keys are added); Maximum Items pages, and from KMIP 1.3 Offset Items too.
        first = c.locate(maximum_items=2, attributes=[factory.create_attribute(enums.AttributeType.STATE, enums.State.PRE_ACTIVE)])
        assert len(first) == 2
        if version == "1.4":
            second = c.locate(maximum_items=2, offset_items=2,
                              attributes=[factory.create_attribute(enums.AttributeType.STATE, enums.State.PRE_ACTIVE)])
            assert len(second) == 2 and not set(first) & set(second)
            pre_active = c.locate(attributes=[factory.create_attribute(enums.AttributeType.STATE, enums.State.PRE_ACTIVE)])
            assert pre_active[:4] == first + second
            assert pre_active.index(created[2]) < pre_active.index(created[4])
    finally:
        c.close()


def test_add_modify_and_delete_attributes(version):
    c = client(version)
    try:
        name = unique("attrs")
        uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=name)
        # Add Attribute has no PyKMIP class: a hand-made request adds a custom attribute and a second Name.
        versions = {"1.0": (1, 0), "1.2": (1, 2), "1.4": (1, 4)}
        add = lambda attribute_name, value: raw_request([(0x0D, [uid_field(uid), ttlv(0x420008, "structure", [
            ttlv(0x42000A, "text", attribute_name), value])])], versions[version])
        with tls_socket() as sock:
            for request in (add("x-tenant", ttlv(0x42000B, "text", "blue")),
                            add("Name", ttlv(0x42000B, "structure", [ttlv(0x420055, "text", name + "-alias"),
                                                                       ttlv(0x420054, "enumeration", 1)]))):
                status, _, message = result_of(exchange_raw(sock, request))
                assert status == ResultStatus.SUCCESS.value, message
            assert result_of(exchange_raw(sock, add("State", ttlv(0x42000B, "enumeration", 2))))[1] == ResultReason.PERMISSION_DENIED.value
        assert "x-tenant" in c.get_attribute_list(uid)
        factory = c.attribute_factory
        assert c.locate(attributes=[factory.create_attribute(enums.AttributeType.NAME, name + "-alias")]) == [uid]
        _, modified = c.modify_attribute(uid, attribute=factory.create_attribute(enums.AttributeType.NAME, name + "-renamed", index=1))
        assert c.locate(attributes=[factory.create_attribute(enums.AttributeType.NAME, name + "-renamed")]) == [uid]
        assert c.locate(attributes=[factory.create_attribute(enums.AttributeType.NAME, name + "-alias")]) == []
        c.delete_attribute(uid, attribute_name="x-tenant", attribute_index=0)
        assert "x-tenant" not in c.get_attribute_list(uid)
        refused(ResultReason.ITEM_NOT_FOUND, c.delete_attribute, uid, attribute_name="x-tenant", attribute_index=0)
    finally:
        c.close()


def test_the_lifecycle_and_its_refusals(version):
    c = client(version)
    try:
        uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=unique("life"))
        c.activate(uid)
        refused(ResultReason.PERMISSION_DENIED, c.activate, uid)
        refused(ResultReason.PERMISSION_DENIED, c.destroy, uid)
        c.revoke(enums.RevocationReasonCode.SUPERSEDED, uid, "replaced")
        assert attribute(c, uid, "State") == enums.State.DEACTIVATED
        c.destroy(uid)
        assert attribute(c, uid, "State") == enums.State.DESTROYED
        assert attribute(c, uid, "Destroy Date") is not None
        refused(ResultReason.KEY_VALUE_NOT_PRESENT, c.get, uid)
        refused(ResultReason.PERMISSION_DENIED, c.destroy, uid)
        refused(ResultReason.ILLEGAL_OPERATION, c.revoke, enums.RevocationReasonCode.SUPERSEDED, uid)
        # A compromise found after destruction is still recorded.
        c.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, uid)
        assert attribute(c, uid, "State") == enums.State.DESTROYED_COMPROMISED
    finally:
        c.close()


def test_compromised_is_terminal_but_for_destroy():
    c = client("1.2")
    try:
        uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=unique("compromised"))
        c.activate(uid)
        ciphertext, iv = c.encrypt(b"before", uid, GCM)
        c.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, uid, "laptop lost", int(time.time()) - 60)
        assert attribute(c, uid, "State") == enums.State.COMPROMISED
        assert attribute(c, uid, "Compromise Occurrence Date") is not None
        refused(ResultReason.PERMISSION_DENIED, c.activate, uid)
        refused(ResultReason.PERMISSION_DENIED, c.encrypt, b"after", uid, GCM)
        refused(ResultReason.ILLEGAL_OPERATION, c.revoke, enums.RevocationReasonCode.KEY_COMPROMISE, uid)
        refused(ResultReason.ILLEGAL_OPERATION, c.revoke, enums.RevocationReasonCode.SUPERSEDED, uid)
        refused(ResultReason.PERMISSION_DENIED, c.rekey, uid)
        c.destroy(uid)
        assert attribute(c, uid, "State") == enums.State.DESTROYED_COMPROMISED
        refused(ResultReason.KEY_VALUE_NOT_PRESENT, c.get, uid)
    finally:
        c.close()


def test_encrypt_and_decrypt_in_1_2_carry_the_tag_after_the_data():
    c = client("1.2")
    try:
        uid = c.create(enums.CryptographicAlgorithm.AES, 256)
        c.activate(uid)
        ciphertext, iv = c.encrypt(b"hello, world", uid, GCM)
        assert len(iv) == 12 and len(ciphertext) == len(b"hello, world") + 16
        assert c.decrypt(ciphertext, uid, GCM, iv_counter_nonce=iv) == b"hello, world"
        tampered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
        refused(ResultReason.CRYPTOGRAPHIC_FAILURE, c.decrypt, tampered, uid, GCM, iv_counter_nonce=iv)
        # The client's own IV is used as given.
        given = os.urandom(12)
        again, returned = c.encrypt(b"hello, world", uid, GCM, iv_counter_nonce=given)
        assert returned is None and c.decrypt(again, uid, GCM, iv_counter_nonce=given) == b"hello, world"
        refused(ResultReason.INVALID_FIELD, c.encrypt, b"x", uid, {"block_cipher_mode": enums.BlockCipherMode.CBC})
        preactive = c.create(enums.CryptographicAlgorithm.AES, 256)
        refused(ResultReason.PERMISSION_DENIED, c.encrypt, b"x", preactive, GCM)
    finally:
        c.close()


def test_encrypt_and_decrypt_in_1_4_with_additional_data_and_tag():
    c = client("1.4")
    p = proxy("1.4")
    try:
        uid = c.create(enums.CryptographicAlgorithm.AES, 128)
        c.activate(uid)
        parameters = core_attributes.CryptographicParameters(block_cipher_mode=enums.BlockCipherMode.GCM,
                                                             cryptographic_algorithm=enums.CryptographicAlgorithm.AES)
        sealed = p.send_request_payload(enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(
            unique_identifier=uid, cryptographic_parameters=parameters, data=b"row 42", auth_additional_data=b"table=orders"))
        assert len(sealed.data) == 6 and len(sealed.auth_tag) == 16 and len(sealed.iv_counter_nonce) == 12
        opened = p.send_request_payload(enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
            unique_identifier=uid, cryptographic_parameters=parameters, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
            auth_additional_data=b"table=orders", auth_tag=sealed.auth_tag))
        assert opened.data == b"row 42"
        with pytest.raises(OperationFailure) as failure:
            p.send_request_payload(enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
                unique_identifier=uid, cryptographic_parameters=parameters, data=sealed.data,
                iv_counter_nonce=sealed.iv_counter_nonce, auth_additional_data=b"table=invoices", auth_tag=sealed.auth_tag))
        assert failure.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE
    finally:
        p.close()
        c.close()


def test_rekey_makes_a_linked_replacement_that_takes_the_names(version):
    c = client(version)
    try:
        name = unique("rekeyed")
        old = c.create(enums.CryptographicAlgorithm.AES, 256, name=name)
        c.activate(old)
        new = c.rekey(old)
        assert new != old
        assert attribute(c, new, "State") == enums.State.ACTIVE
        assert c.get(new).value != c.get(old).value
        factory = c.attribute_factory
        assert c.locate(attributes=[factory.create_attribute(enums.AttributeType.NAME, name)]) == [new]
        assert "Link" in c.get_attribute_list(new) and "Link" in c.get_attribute_list(old)
        assert "Name" not in c.get_attribute_list(old)
    finally:
        c.close()


def test_a_batch_uses_the_id_placeholder():
    # Create then Activate with no Unique Identifier: the second item acts on what the first made.
    create = (0x01, [ttlv(0x420057, "enumeration", 2), ttlv(0x420091, "structure", [
        ttlv(0x420008, "structure", [ttlv(0x42000A, "text", "Cryptographic Algorithm"), ttlv(0x42000B, "enumeration", 3)]),
        ttlv(0x420008, "structure", [ttlv(0x42000A, "text", "Cryptographic Length"), ttlv(0x42000B, "integer", 256)]),
    ])])
    with tls_socket() as sock:
        response = exchange(sock, raw_request([create, (0x12, [])]))
    assert [item.result_status.value for item in response.batch_items] == [ResultStatus.SUCCESS, ResultStatus.SUCCESS]
    uid = response.batch_items[0].response_payload.unique_identifier
    assert response.batch_items[1].response_payload.unique_identifier.value == uid
    c = client("1.4")
    try:
        assert attribute(c, uid, "State") == enums.State.ACTIVE
    finally:
        c.close()


def test_objects_of_one_identity_are_invisible_to_another_unless_a_grant_shares_them():
    # KMIP 1.2: PyKMIP's high-level Encrypt drops the separate tag of 1.4, so 1.2 carries it after the data.
    mine = client("1.2")
    other = client("1.2", cert="node-2")
    try:
        private = mine.create(enums.CryptographicAlgorithm.AES, 256, name=unique("private"))
        mine.activate(private)
        factory = mine.attribute_factory
        assert other.locate(attributes=[factory.create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY)]).count(private) == 0
        refused(ResultReason.ITEM_NOT_FOUND, other.get, private)
        refused(ResultReason.ITEM_NOT_FOUND, other.get_attributes, private, ["State"])
        refused(ResultReason.ITEM_NOT_FOUND, other.encrypt, b"x", private, GCM)
        refused(ResultReason.ITEM_NOT_FOUND, other.destroy, private)
        # node-2 may use KMIP but not export: its own key encrypts, Get is refused.
        own = other.create(enums.CryptographicAlgorithm.AES, 256)
        other.activate(own)
        ciphertext, iv = other.encrypt(b"data", own, GCM)
        assert other.decrypt(ciphertext, own, GCM, iv_counter_nonce=iv) == b"data"
        refused(ResultReason.PERMISSION_DENIED, other.get, own)
        # An object named shared-… is shared with node-2 by kmip.grants.
        shared_name = unique("shared")
        shared = mine.create(enums.CryptographicAlgorithm.AES, 256, name=shared_name)
        mine.activate(shared)
        assert other.locate(attributes=[factory.create_attribute(enums.AttributeType.NAME, shared_name)]) == [shared]
        ciphertext, iv = other.encrypt(b"shared data", shared, GCM)
        assert mine.decrypt(ciphertext, shared, GCM, iv_counter_nonce=iv) == b"shared data"
        refused(ResultReason.PERMISSION_DENIED, other.get, shared)
        # A grant shares use, not control: node-2 changes nothing of node-1's object…
        refused(ResultReason.PERMISSION_DENIED, other.revoke, enums.RevocationReasonCode.KEY_COMPROMISE, shared)
        refused(ResultReason.PERMISSION_DENIED, other.destroy, shared)
        # …and cannot place a key of its own among the shared ones (only the grant's owners name objects so).
        refused(ResultReason.PERMISSION_DENIED, other.create, enums.CryptographicAlgorithm.AES, 256, name=unique("shared"))
        assert attribute(mine, shared, "State") == enums.State.ACTIVE
    finally:
        mine.close()
        other.close()


@pytest.mark.outage
def test_the_hsm_down_fails_each_operation_and_recovers_without_a_restart():
    c = client("1.2")
    try:
        uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=unique("outage"))
        c.activate(uid)
        material = c.get(uid).value
        fault("down")
        try:
            for call, args in ((c.get, (uid,)), (c.create, (enums.CryptographicAlgorithm.AES, 256)),
                               (c.encrypt, (b"x", uid, GCM))):
                with pytest.raises(KmipOperationFailure) as failure:
                    call(*args)
                assert failure.value.status == ResultStatus.OPERATION_FAILED
                assert failure.value.reason == ResultReason.GENERAL_FAILURE
                assert "unavailable" in failure.value.message.lower() or "hsm" in failure.value.message.lower(), failure.value.message
            # What needs no key material still answers from the state store.
            assert attribute(c, uid, "State") == enums.State.ACTIVE
        finally:
            fault("")
        # kmsd reconnects on its own (backing off while the device stays away); Get and Create work again.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert c.get(uid).value == material
                c.create(enums.CryptographicAlgorithm.AES, 256)
                break
            except KmipOperationFailure:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def test_objects_keep_their_key_bytes_when_the_wrapping_key_rotates():
    c = client("1.4")
    try:
        kept = {}
        for index in range(4):
            uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=unique("kek-rotation"))
            kept[uid] = c.get(uid).value
        secret = c.register(objects.SecretData(b"a database password", enums.SecretDataType.PASSWORD))
        kept[secret] = b"a database password"
        status, before = admin("GET", "/v1/admin/kmip/objects/" + secret)
        assert status == 200
        status, rotated = admin("POST", "/v1/admin/keys/kmip-kek/rotate", {"reason": "test"})
        assert status == 200, rotated
        target = rotated["version"]
        assert target > before["wrapping_version"]
        deadline = time.monotonic() + 30
        while True:
            listed, after = [], ""
            while True:
                status, listing = admin("GET", "/v1/admin/kmip/objects?limit=1000" + (f"&after={after}" if after else ""))
                assert status == 200, listing
                listed += listing["objects"]
                after = listing.get("next")
                if not after:
                    break
            stale = [o["id"] for o in listed if o.get("wrapping_version") is not None and o["wrapping_version"] < target]
            if not stale:
                break
            assert time.monotonic() < deadline, f"{len(stale)} objects still under an older wrapping key version"
            time.sleep(0.5)
        for uid, material in kept.items():
            assert c.get(uid).value == material
    finally:
        c.close()


def test_kmsctl_sees_every_owner_and_destroys_what_kmip_made():
    c = client("1.4")
    try:
        uid = c.create(enums.CryptographicAlgorithm.AES, 256, name=unique("kmsctl"))
        c.activate(uid)
        status, shown = admin("GET", "/v1/admin/kmip/objects/" + uid)
        assert status == 200 and shown["state"] == "active" and shown["owner"] == "uri:spiffe://kmsd.dev/storage/node-1"
        assert not {"material", "key", "envelope", "value"} & set(shown)
        status, refusal = admin("POST", f"/v1/admin/kmip/objects/{uid}/destroy")
        assert status == 409
        status, revoked = admin("POST", f"/v1/admin/kmip/objects/{uid}/revoke", {"reason": "key_compromise", "message": "test"})
        assert status == 200 and revoked["state"] == "compromised"
        status, destroyed = admin("POST", f"/v1/admin/kmip/objects/{uid}/destroy")
        assert status == 200 and destroyed["state"] == "destroyed_compromised" and "wrapping_version" not in destroyed
        refused(ResultReason.KEY_VALUE_NOT_PRESENT, c.get, uid)
    finally:
        c.close()
