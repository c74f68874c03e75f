# The operation sequences three storage systems send (docs/kmip.md, "Clients"), byte for byte as far as their sources
# show, replayed against kmsd: each stores a key, kmsd restarts (ci/kmip-conformance runs the after_restart tests in a
# second phase), and each reads its key back the way it does at its own startup.
import os
import time
import uuid

import pytest

from conftest import (attribute_field, call, find, name_attribute, payload_of, raw_request, recall, remember, result_of,
                      tls_socket, exchange_raw, ttlv, uid_field, values)

SYMMETRIC_KEY, SECRET_DATA = 2, 7
CREATE, REGISTER, LOCATE, GET, GET_ATTRIBUTES, ACTIVATE, REVOKE, DESTROY, QUERY, ENCRYPT, DECRYPT = (
    0x01, 0x03, 0x08, 0x0A, 0x0B, 0x12, 0x13, 0x14, 0x18, 0x1F, 0x20)


def key_material(response):
    return values(find(response, 0x420043)[0], 0x420043)[0]


# --- Percona pg_tde (libkmip's kmip_bio_* calls): Locate by Name, Register, then at every read Locate + Get ---

def pg_tde_locate(name):
    return call(raw_request([(LOCATE, [ttlv(0x42004F, "integer", 16), attribute_field("Object Type", "enumeration", SYMMETRIC_KEY),
                                       name_attribute(name)])], (1, 0)), (1, 0))


def pg_tde_register(name, material):
    header = [ttlv(0x420050, "integer", 8192), ttlv(0x420092, "datetime", int(time.time()))]
    template = ttlv(0x420091, "structure", [
        attribute_field("Cryptographic Algorithm", "enumeration", 3), attribute_field("Cryptographic Length", "integer", len(material) * 8),
        attribute_field("Cryptographic Usage Mask", "integer", 12), name_attribute(name)])
    block = ttlv(0x42008F, "structure", [ttlv(0x420040, "structure", [
        ttlv(0x420042, "enumeration", 1), ttlv(0x420041, "enumeration", 1),
        ttlv(0x420045, "structure", [ttlv(0x420043, "bytes", material)]),
        ttlv(0x420028, "enumeration", 3), ttlv(0x42002A, "integer", len(material) * 8)])])
    return call(raw_request([(REGISTER, [ttlv(0x420057, "enumeration", SYMMETRIC_KEY), template, block])], (1, 4), header), (1, 4))


def pg_tde_read(name):
    """Locate by Name then Get on the same connection, as pg_tde reads its principal key."""
    with tls_socket() as sock:
        located = exchange_raw(sock, raw_request([(LOCATE, [ttlv(0x42004F, "integer", 16),
                                                            attribute_field("Object Type", "enumeration", SYMMETRIC_KEY),
                                                            name_attribute(name)])], (1, 0)))
        ids = values(payload_of(located), 0x420094)
        assert len(ids) == 1, f"pg_tde needs exactly one key named {name}, kmsd located {len(ids)}"
        got = exchange_raw(sock, raw_request([(GET, [uid_field(ids[0].decode())])], (1, 0)))
        assert result_of(got)[0] == 0
        return key_material(got)


def test_pg_tde_registers_its_principal_key():
    name = f"pg_tde-principal-{uuid.uuid4().hex[:8]}"
    assert values(payload_of(pg_tde_locate(name)), 0x420094) == []  # not there yet: success with no ids
    material = os.urandom(16)  # pg_tde.cipher = aes_128, the default
    pg_tde_register(name, material)
    assert len(values(payload_of(pg_tde_locate(name)), 0x420094)) == 1  # pg_tde's check that a name is taken
    assert pg_tde_read(name) == material
    remember("pg_tde", {"name": name, "material": material.hex()})


@pytest.mark.after_restart
def test_pg_tde_reads_its_principal_key_after_a_restart():
    stored = recall("pg_tde")
    assert pg_tde_read(stored["name"]) == bytes.fromhex(stored["material"])


# --- Percona Server component_keyring_kmip (kmippp over libkmip): Register + Activate to store, Locate with paging by
# object type and group + Get + Get Attributes Name to load, Revoke + Destroy to delete; each call on a new connection ---

def mysql_store_key(name, group, material):
    template = ttlv(0x420091, "structure", [
        attribute_field("Cryptographic Algorithm", "enumeration", 3), attribute_field("Cryptographic Length", "integer", len(material) * 8),
        attribute_field("Cryptographic Usage Mask", "integer", 12), name_attribute(name), attribute_field("Object Group", "text", group)])
    block = ttlv(0x42008F, "structure", [ttlv(0x420040, "structure", [
        ttlv(0x420042, "enumeration", 1), ttlv(0x420045, "structure", [ttlv(0x420043, "bytes", material)]),
        ttlv(0x420028, "enumeration", 3), ttlv(0x42002A, "integer", len(material) * 8)])])
    uid = values(call(raw_request([(REGISTER, [ttlv(0x420057, "enumeration", SYMMETRIC_KEY), template, block])], (1, 4))), 0x420094)[0]
    call(raw_request([(ACTIVATE, [uid_field(uid.decode())])], (1, 0)))
    return uid.decode()


def mysql_store_secret(name, group, secret):
    template = ttlv(0x420091, "structure", [attribute_field("Cryptographic Usage Mask", "integer", 0x240), name_attribute(name),
                                            attribute_field("Object Group", "text", group)])
    data = ttlv(0x420085, "structure", [ttlv(0x420086, "enumeration", 1), ttlv(0x420040, "structure", [
        ttlv(0x420042, "enumeration", 2), ttlv(0x420045, "structure", [ttlv(0x420043, "bytes", secret)])])])
    uid = values(call(raw_request([(REGISTER, [ttlv(0x420057, "enumeration", SECRET_DATA), template, data])], (1, 4))), 0x420094)[0]
    call(raw_request([(ACTIVATE, [uid_field(uid.decode())])], (1, 0)))
    return uid.decode()


def mysql_load(group):
    """The keyring's startup: for keys then secrets, Locate in pages of 16 until an empty page (or Located Items), then
    Get and the Name of each."""
    loaded = {}
    for object_type in (SYMMETRIC_KEY, SECRET_DATA):
        ids, offset = [], 0
        while True:
            page = payload_of(call(raw_request([(LOCATE, [ttlv(0x42004F, "integer", 16), ttlv(0x4200D4, "integer", offset),
                                                          attribute_field("Object Type", "enumeration", object_type),
                                                          attribute_field("Object Group", "text", group)])], (1, 0))))
            found = [uid.decode() for uid in values(page, 0x420094)]
            if not found:
                break
            ids += found
            offset += len(found)
            located = values(page, 0x4200D5)
            if located and offset >= located[0]:
                break
        for uid in ids:
            material = key_material(call(raw_request([(GET, [uid_field(uid)])], (1, 0))))
            attributes = call(raw_request([(GET_ATTRIBUTES, [uid_field(uid), ttlv(0x42000A, "text", "Name")])], (1, 4)))
            name = values(attributes, 0x420055)[0].decode()
            loaded[name] = material
    return loaded


def mysql_delete(uid):
    call(raw_request([(REVOKE, [uid_field(uid), ttlv(0x420081, "structure", [
        ttlv(0x420082, "enumeration", 1), ttlv(0x420080, "text", "Deleting the key")])])], (1, 0)))
    call(raw_request([(DESTROY, [uid_field(uid)])], (1, 0)))


def test_mysql_keyring_stores_keys_and_a_secret_and_deletes_one():
    group = f"mysql-{uuid.uuid4().hex[:8]}"
    keys = {f"INNODBKey-{index}": os.urandom(32) for index in range(20)}  # more than a page of 16
    ids = {name: mysql_store_key(name, group, material) for name, material in keys.items()}
    secret = b"replication-password"
    mysql_store_secret("percona_binlog", group, secret)
    loaded = mysql_load(group)
    assert loaded == {**keys, "percona_binlog": secret}
    mysql_delete(ids["INNODBKey-0"])
    del keys["INNODBKey-0"]
    # Destroyed objects are not located again, so the keyring's next load does not trip on them.
    assert mysql_load(group) == {**keys, "percona_binlog": secret}
    remember("mysql", {"group": group, "keys": {name: material.hex() for name, material in keys.items()}, "secret": secret.hex()})


def test_mysql_keyring_kmipclient_queries_and_reads_in_one_batch():
    # The newer client (kmipclient): one connection, KMIP 1.4, Query at startup, and Get with Get Attributes in one
    # ordered batch with 4-byte batch item ids.
    group = f"mysql-b-{uuid.uuid4().hex[:8]}"
    uid = mysql_store_key("INNODBKey-b", group, material := os.urandom(32))
    header = [ttlv(0x420050, "integer", 1 << 20), ttlv(0x420092, "datetime", int(time.time())), ttlv(0x420010, "boolean", 1)]
    with tls_socket() as sock:
        query = exchange_raw(sock, raw_request([(QUERY, [ttlv(0x420074, "enumeration", 1), ttlv(0x420074, "enumeration", 2),
                                                         ttlv(0x420074, "enumeration", 3)])], (1, 4), header))
        assert result_of(query)[0] == 0
        operations = values(payload_of(query), 0x42005C)
        assert {LOCATE, GET, GET_ATTRIBUTES, REGISTER, ACTIVATE, REVOKE, DESTROY} <= set(operations)
        batch = exchange_raw(sock, raw_request([(GET, [uid_field(uid)]), (GET_ATTRIBUTES, [uid_field(uid)])], (1, 4), header, id_width=4))
    assert [result_of(batch, index)[0] for index in range(2)] == [0, 0]
    assert values(batch, 0x420093) == [(1).to_bytes(4, "big"), (2).to_bytes(4, "big")]
    assert key_material(batch) == material
    names = [values(attribute, 0x42000A)[0].decode() for attribute in find(payload_of(batch, 1), 0x420008)]
    assert "State" in names and "Name" in names


@pytest.mark.after_restart
def test_mysql_keyring_loads_its_keys_after_a_restart():
    stored = recall("mysql")
    expected = {name: bytes.fromhex(material) for name, material in stored["keys"].items()}
    assert mysql_load(stored["group"]) == {**expected, "percona_binlog": bytes.fromhex(stored["secret"])}


# --- MongoDB Enterprise (encrypted storage engine): Create an AES-256 key, Get it, Activate it, check its State;
# at restart Get by the id it kept and check State; the audit log's key wrapped with Encrypt and Decrypt (KMIP 1.2,
# no Cryptographic Parameters). The header carries only the version and the batch count. ---

def mongodb_state(uid, version):
    response = call(raw_request([(GET_ATTRIBUTES, [uid_field(uid), ttlv(0x42000A, "text", "State")])], version), version)
    return values(find(response, 0x420008)[0], 0x42000B)[0]


@pytest.mark.parametrize("version", [(1, 2), (1, 0)], ids=["default", "legacy"])
def test_mongodb_creates_gets_and_activates_its_master_key(version):
    template = ttlv(0x420091, "structure", [attribute_field("Cryptographic Algorithm", "enumeration", 3),
                                            attribute_field("Cryptographic Length", "integer", 256),
                                            attribute_field("Cryptographic Usage Mask", "integer", 12)])
    with tls_socket() as sock:
        created = exchange_raw(sock, raw_request([(CREATE, [ttlv(0x420057, "enumeration", SYMMETRIC_KEY), template])], version))
        assert result_of(created)[0] == 0
        uid = values(payload_of(created), 0x420094)[0].decode()
        got = exchange_raw(sock, raw_request([(GET, [uid_field(uid)])], version))
        assert result_of(got)[0] == 0 and values(got, 0x420042) == [1]  # Raw
        material = key_material(got)
        assert len(material) == 32 and values(got, 0x42002A) == [256] and values(got, 0x420028) == [3]
        assert values(got, 0x420092), "MongoDB needs the response header's Time Stamp"
        assert result_of(exchange_raw(sock, raw_request([(ACTIVATE, [uid_field(uid)])], version)))[0] == 0
    assert mongodb_state(uid, version) == 2  # Active, or mongod refuses to start
    record = {"uid": uid, "material": material.hex()}
    if version >= (1, 2):
        audit_key = os.urandom(32)
        sealed = payload_of(call(raw_request([(ENCRYPT, [uid_field(uid), ttlv(0x4200C2, "bytes", audit_key)])], version)))
        data, iv = values(sealed, 0x4200C2)[0], values(sealed, 0x42003D)[0]
        opened = call(raw_request([(DECRYPT, [uid_field(uid), ttlv(0x4200C2, "bytes", data), ttlv(0x42003D, "bytes", iv)])], version))
        assert values(payload_of(opened), 0x4200C2)[0] == audit_key
        record.update(audit_key=audit_key.hex(), data=data.hex(), iv=iv.hex())
    remember(f"mongodb-{version[0]}.{version[1]}", record)


@pytest.mark.after_restart
@pytest.mark.parametrize("version", [(1, 2), (1, 0)], ids=["default", "legacy"])
def test_mongodb_gets_its_master_key_after_a_restart(version):
    stored = recall(f"mongodb-{version[0]}.{version[1]}")
    got = call(raw_request([(GET, [uid_field(stored["uid"])])], version), version)
    assert key_material(got) == bytes.fromhex(stored["material"])
    assert mongodb_state(stored["uid"], version) == 2
    if "audit_key" in stored:
        opened = call(raw_request([(DECRYPT, [uid_field(stored["uid"]), ttlv(0x4200C2, "bytes", bytes.fromhex(stored["data"])),
                                              ttlv(0x42003D, "bytes", bytes.fromhex(stored["iv"]))])], version))
        assert values(payload_of(opened), 0x4200C2)[0] == bytes.fromhex(stored["audit_key"])
