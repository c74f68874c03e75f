"""The conformance checks of shared/vault-transit-contract.md section 6 (its check 30 as two tests, health and seal),
made with hvac 2.4.0 (a client kmsd did not
write) and, where hvac hides what must be checked (status codes, headers, raw bodies), with requests."""

import base64
import os
import re
import uuid

import hvac
import hvac.exceptions as exc
import pytest


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def errors_of(response):
    assert response.headers.get("Content-Type") == "application/json", response.headers
    return response.json()["errors"]


def test_01_error_body_shape(client, raw, key_name):
    response = raw("GET", f"transit/keys/{key_name}")
    assert response.status_code == 404
    assert errors_of(response) == []
    response = raw("POST", f"transit/encrypt/{key_name}", json={"plaintext": "%%%"})
    assert response.status_code == 400
    assert len(errors_of(response)) == 1
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.encrypt_data(key_name, "%%%")
    assert caught.value.errors, "hvac could not read the errors (Content-Type must be exactly application/json)"


def test_02_no_token(raw):
    response = raw("GET", "transit/keys?list=true", token=None)
    assert response.status_code == 403
    assert "permission denied" in errors_of(response)[0]


def test_03_unknown_token(addr, verify, raw):
    response = raw("GET", "auth/token/lookup-self", token="hvs.not-a-token")
    assert response.status_code == 403
    assert "permission denied" in errors_of(response)[0] and "invalid token" in errors_of(response)[0]
    stranger = hvac.Client(url=addr, token="hvs.not-a-token", verify=verify)
    with pytest.raises(exc.Forbidden):
        stranger.secrets.transit.list_keys()
    assert stranger.is_authenticated() is False


def test_04_bearer_token(raw, root_token):
    response = raw("GET", "auth/token/lookup-self", token=None, headers={"Authorization": f"Bearer {root_token}"})
    assert response.status_code == 200
    assert response.json()["data"]["policies"] == ["root"]


def test_05_namespace_and_request_headers(raw, key_name):
    response = raw("POST", f"transit/keys/{key_name}", headers={"X-Vault-Namespace": "ns1/", "X-Vault-Request": "true"})
    assert response.status_code in (200, 204)
    response = raw("GET", f"transit/keys/{key_name}", headers={"X-Vault-Namespace": "ns1/", "X-Vault-Request": "true"})
    assert response.status_code == 200
    assert response.json()["data"]["name"] == key_name


def test_06_create_key(client, key_name):
    created = client.secrets.transit.create_key(key_name)
    info = created["data"] if isinstance(created, dict) else client.secrets.transit.read_key(key_name)["data"]
    assert info["type"] == "aes256-gcm96"
    assert info["latest_version"] == 1
    assert info["min_decryption_version"] == 1
    assert isinstance(info["keys"]["1"], int)


def test_07_create_again_warns(client, key_name):
    client.secrets.transit.create_key(key_name)
    again = client.secrets.transit.create_key(key_name)
    assert isinstance(again, dict), "a repeated create answers 200 with a body"
    assert f"key {key_name} already existed" in (again.get("warnings") or [])


def test_08_read_missing(client, raw, key_name):
    response = raw("GET", f"transit/keys/{key_name}")
    assert response.status_code == 404 and response.json() == {"errors": []}
    with pytest.raises(exc.InvalidPath):
        client.secrets.transit.read_key(key_name)


def test_09_list_keys(client, raw):
    mount = "transit-" + uuid.uuid4().hex[:8]
    response = raw("POST", f"sys/mounts/{mount}", json={"type": "transit"})
    assert response.status_code in (200, 204), response.text
    try:
        with pytest.raises(exc.InvalidPath):
            client.secrets.transit.list_keys(mount_point=mount)
        client.secrets.transit.create_key("k1", mount_point=mount)
        client.secrets.transit.create_key("k2", mount_point=mount)
        listed = client.secrets.transit.list_keys(mount_point=mount)["data"]["keys"]
        assert sorted(listed) == ["k1", "k2"]
        assert raw("GET", f"{mount}/keys").status_code == 405
    finally:
        raw("DELETE", f"sys/mounts/{mount}")


def test_10_encrypt_format(client, key_name):
    client.secrets.transit.create_key(key_name)
    result = client.secrets.transit.encrypt_data(key_name, b64("hi"))["data"]
    assert re.fullmatch(r"vault:v1:[A-Za-z0-9+/=]+", result["ciphertext"])
    assert len(base64.b64decode(result["ciphertext"].split(":", 2)[2])) == 12 + 2 + 16
    assert result["key_version"] == 1


def test_11_decrypt_round_trip(client, key_name):
    client.secrets.transit.create_key(key_name)
    for text in ("hi", ""):
        ciphertext = client.secrets.transit.encrypt_data(key_name, b64(text))["data"]["ciphertext"]
        plaintext = client.secrets.transit.decrypt_data(key_name, ciphertext)["data"]["plaintext"]
        assert plaintext == b64(text)


def test_12_encrypt_upserts(client, key_name):
    client.secrets.transit.encrypt_data(key_name, b64("x"))
    assert client.secrets.transit.read_key(key_name)["data"]["derived"] is False
    derived = key_name + "-d"
    client.secrets.transit.encrypt_data(derived, b64("x"), context=b64("tenant"))
    assert client.secrets.transit.read_key(derived)["data"]["derived"] is True


def test_13_bad_base64_plaintext(client, key_name):
    client.secrets.transit.create_key(key_name)
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.encrypt_data(key_name, "%%%")
    assert caught.value.errors == ["illegal base64 data at input byte 0"]


def _flip(ciphertext):
    prefix, blob = ciphertext.rsplit(":", 1)
    data = bytearray(base64.b64decode(blob))
    data[len(data) // 2] ^= 0x01
    return prefix + ":" + base64.b64encode(bytes(data)).decode()


def test_14_tampered_ciphertext(client, key_name):
    client.secrets.transit.create_key(key_name)
    ciphertext = client.secrets.transit.encrypt_data(key_name, b64("secret"))["data"]["ciphertext"]
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.decrypt_data(key_name, _flip(ciphertext))
    assert caught.value.errors == ["cipher: message authentication failed"]


def test_15_associated_data(client, key_name):
    client.secrets.transit.create_key(key_name)
    ciphertext = client.secrets.transit.encrypt_data(key_name, b64("secret"), associated_data=b64("a"))["data"]["ciphertext"]
    for wrong in (None, b64("b")):
        with pytest.raises(exc.InvalidRequest) as caught:
            if wrong is None:
                client.secrets.transit.decrypt_data(key_name, ciphertext)
            else:
                client.secrets.transit.decrypt_data(key_name, ciphertext, associated_data=wrong)
        assert caught.value.errors == ["cipher: message authentication failed"]
    ok = client.secrets.transit.decrypt_data(key_name, ciphertext, associated_data=b64("a"))
    assert ok["data"]["plaintext"] == b64("secret")


def test_16_malformed_ciphertexts(client, key_name):
    client.secrets.transit.create_key(key_name)
    blob = client.secrets.transit.encrypt_data(key_name, b64("x"))["data"]["ciphertext"].split(":", 2)[2]
    cases = {
        f"vault:v9:{blob}": "invalid ciphertext: version is too new",
        "foo:v1:x": "invalid ciphertext: no prefix",
        f"vault:vX:{blob}": "invalid ciphertext: version number could not be decoded",
        "vault:v1:@@": "invalid ciphertext: could not decode base64",
    }
    for ciphertext, message in cases.items():
        with pytest.raises(exc.InvalidRequest) as caught:
            client.secrets.transit.decrypt_data(key_name, ciphertext)
        assert caught.value.errors == [message], ciphertext


def test_17_rotate(client, key_name):
    client.secrets.transit.create_key(key_name)
    old = client.secrets.transit.encrypt_data(key_name, b64("old"))["data"]["ciphertext"]
    rotated = client.secrets.transit.rotate_key(key_name)
    info = rotated["data"] if isinstance(rotated, dict) else client.secrets.transit.read_key(key_name)["data"]
    assert info["latest_version"] == 2
    assert client.secrets.transit.encrypt_data(key_name, b64("new"))["data"]["ciphertext"].startswith("vault:v2:")
    assert client.secrets.transit.decrypt_data(key_name, old)["data"]["plaintext"] == b64("old")


def test_18_min_decryption_version(client, key_name):
    client.secrets.transit.create_key(key_name)
    old = client.secrets.transit.encrypt_data(key_name, b64("old"))["data"]["ciphertext"]
    client.secrets.transit.rotate_key(key_name)
    client.secrets.transit.update_key_configuration(key_name, min_decryption_version=2)
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.decrypt_data(key_name, old)
    assert caught.value.errors == ["ciphertext or signature version is disallowed by policy (too old)"]
    assert "1" not in client.secrets.transit.read_key(key_name)["data"]["keys"]
    client.secrets.transit.update_key_configuration(key_name, min_decryption_version=1)
    assert set(client.secrets.transit.read_key(key_name)["data"]["keys"]) == {"1", "2"}
    assert client.secrets.transit.decrypt_data(key_name, old)["data"]["plaintext"] == b64("old")


def test_19_min_decryption_version_bounds(client, key_name):
    client.secrets.transit.create_key(key_name)
    client.secrets.transit.rotate_key(key_name)
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.update_key_configuration(key_name, min_decryption_version=5)
    assert caught.value.errors == ["cannot set min decryption version of 5, latest key version is 2"]
    forced = client.secrets.transit.update_key_configuration(key_name, min_decryption_version=0)
    assert isinstance(forced, dict)
    assert "since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1" in (forced.get("warnings") or [])


def test_20_encryption_version_bounds(client, key_name):
    client.secrets.transit.create_key(key_name)
    client.secrets.transit.rotate_key(key_name)
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.encrypt_data(key_name, b64("x"), key_version=3)
    assert caught.value.errors == ["requested version for encryption is higher than the latest key version"]
    client.secrets.transit.update_key_configuration(key_name, min_encryption_version=2)
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.encrypt_data(key_name, b64("x"), key_version=1)
    assert caught.value.errors == ["requested version for encryption is less than the minimum encryption key version"]


def test_21_rewrap(client, key_name):
    client.secrets.transit.create_key(key_name)
    old = client.secrets.transit.encrypt_data(key_name, b64("data"))["data"]["ciphertext"]
    client.secrets.transit.rotate_key(key_name)
    rewrapped = client.secrets.transit.rewrap_data(key_name, old)["data"]
    assert rewrapped["ciphertext"].startswith("vault:v2:")
    assert rewrapped["key_version"] == 2
    assert client.secrets.transit.decrypt_data(key_name, rewrapped["ciphertext"])["data"]["plaintext"] == b64("data")


def test_22_datakey(client, raw, key_name):
    client.secrets.transit.create_key(key_name)
    plain = client.secrets.transit.generate_data_key(key_name, key_type="plaintext", bits=256)["data"]
    assert len(base64.b64decode(plain["plaintext"])) == 32
    assert client.secrets.transit.decrypt_data(key_name, plain["ciphertext"])["data"]["plaintext"] == plain["plaintext"]
    wrapped = client.secrets.transit.generate_data_key(key_name, key_type="wrapped")["data"]
    assert "plaintext" not in wrapped and wrapped["ciphertext"].startswith("vault:v1:")
    response = raw("POST", f"transit/datakey/plaintext/{key_name}", json={"bits": 100})
    assert response.status_code == 400 and errors_of(response) == ["invalid bit length"]
    response = raw("POST", f"transit/datakey/foo/{key_name}", json={})
    assert response.status_code == 400 and errors_of(response) == ["Invalid path, must be 'plaintext' or 'wrapped'"]


@pytest.mark.derived_key
def test_23_derived_key(client, key_name):
    client.secrets.transit.create_key(key_name, derived=True)
    ciphertext = client.secrets.transit.encrypt_data(key_name, b64("x"), context=b64("tenant-1"))["data"]["ciphertext"]
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.decrypt_data(key_name, ciphertext)
    assert caught.value.errors[0].startswith("missing 'context' for key derivation")
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.decrypt_data(key_name, ciphertext, context=b64("tenant-2"))
    assert caught.value.errors == ["cipher: message authentication failed"]
    ok = client.secrets.transit.decrypt_data(key_name, ciphertext, context=b64("tenant-1"))
    assert ok["data"]["plaintext"] == b64("x")


def test_24_batch_encrypt_partial_failure(client, raw, key_name):
    client.secrets.transit.create_key(key_name)
    items = [{"plaintext": b64("a"), "reference": "r1"}, {"plaintext": "%%%", "reference": "r2"}]
    response = raw("POST", f"transit/encrypt/{key_name}", json={"batch_input": items})
    assert response.status_code == 400
    body = response.json()
    assert "errors" not in body
    results = body["data"]["batch_results"]
    assert [r.get("reference") for r in results] == ["r1", "r2"]
    assert results[0]["ciphertext"].startswith("vault:v1:") and results[1]["error"]
    response = raw("POST", f"transit/encrypt/{key_name}", json={"batch_input": items, "partial_failure_response_code": 207})
    assert response.status_code == 207


def test_25_batch_rewrap_item_error(client, raw, key_name):
    client.secrets.transit.create_key(key_name)
    good = client.secrets.transit.encrypt_data(key_name, b64("a"))["data"]["ciphertext"]
    client.secrets.transit.rotate_key(key_name)
    response = raw("POST", f"transit/rewrap/{key_name}", json={"batch_input": [{"ciphertext": good}, {"ciphertext": "foo:v1:x"}]})
    assert response.status_code == 200
    results = response.json()["data"]["batch_results"]
    assert results[0]["ciphertext"].startswith("vault:v2:")
    assert results[1]["error"] == "invalid ciphertext: no prefix"


def test_26_delete(client, raw, key_name):
    client.secrets.transit.create_key(key_name)
    with pytest.raises(exc.InvalidRequest):
        client.secrets.transit.delete_key(key_name)
    client.secrets.transit.update_key_configuration(key_name, deletion_allowed=True)
    assert raw("DELETE", f"transit/keys/{key_name}").status_code == 204
    response = raw("DELETE", f"transit/keys/{key_name}")
    assert response.status_code == 400 and "not found" in errors_of(response)[0]


def test_27_missing_key_messages(client):
    missing = "missing-" + uuid.uuid4().hex[:8]
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.rotate_key(missing)
    assert caught.value.errors == ["key not found"]
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.update_key_configuration(missing, min_decryption_version=1)
    assert caught.value.errors == [f"no existing key named {missing} could be found"]
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.trim_key(missing, min_version=1)
    assert caught.value.errors == ["invalid key name"]


def test_28_trim_needs_min_encryption_version(client, key_name):
    client.secrets.transit.create_key(key_name)
    client.secrets.transit.rotate_key(key_name)
    with pytest.raises(exc.InvalidRequest) as caught:
        client.secrets.transit.trim_key(key_name, min_version=1)
    assert "minimum encryption version is not set" in caught.value.errors[0]


def test_29_tokens(client, addr, verify, raw):
    me = client.auth.token.lookup_self()["data"]
    assert me["policies"] == ["root"] and me["ttl"] == 0
    with pytest.raises(exc.InvalidRequest) as caught:
        client.auth.token.renew_self()
    assert caught.value.errors == ["invalid lease ID"]
    role = "conformance-" + uuid.uuid4().hex[:6]
    assert raw("POST", f"auth/approle/role/{role}", json={"token_ttl": "60s", "token_max_ttl": "120s", "token_policies": ["default"]}).status_code in (200, 204)
    role_id = raw("GET", f"auth/approle/role/{role}/role-id").json()["data"]["role_id"]
    secret_id = raw("POST", f"auth/approle/role/{role}/secret-id").json()["data"]["secret_id"]
    app = hvac.Client(url=addr, verify=verify)
    login = app.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert login["auth"]["client_token"] and app.is_authenticated()
    renewed = app.auth.token.renew_self()
    assert renewed["auth"]["lease_duration"] > 0


def test_30_health(client, raw):
    head = raw("HEAD", "sys/health", token=None)
    assert head.status_code == 200 and head.content == b""
    health = client.sys.read_health_status(method="GET")
    assert {"initialized", "sealed", "standby"} <= set(health)
    assert raw("GET", "sys/health?sealedcode=abc", token=None).status_code == 400


def test_31_seal(client, raw):
    unseal_key = os.environ.get("VAULT_UNSEAL_KEY")
    if not unseal_key:
        pytest.skip("VAULT_UNSEAL_KEY is not set: the seal check cannot run")
    assert raw("PUT", "sys/seal").status_code in (200, 204)
    try:
        assert raw("HEAD", "sys/health", token=None).status_code == 503
        assert raw("GET", "sys/health", token=None).status_code == 503
        response = raw("GET", "transit/keys?list=true")
        assert response.status_code == 503 and errors_of(response) == ["Vault is sealed"]
        with pytest.raises(exc.VaultDown):
            client.secrets.transit.list_keys()
        assert client.sys.read_seal_status()["sealed"] is True
    finally:
        raw("PUT", "sys/unseal", token=None, json={"key": unseal_key})
    assert client.sys.read_seal_status()["sealed"] is False
    assert raw("HEAD", "sys/health", token=None).status_code == 200
