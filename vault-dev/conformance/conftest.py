"""Fixtures for the hvac conformance suite.

The suite runs against the server named by VAULT_ADDR with the root token VAULT_TOKEN: vault-dev in ci/test, or a
real `vault server -dev` (vault-dev/start uses one when a vault binary is on PATH). VAULT_UNSEAL_KEY is needed by
the seal/unseal check; VAULT_CACERT names a CA bundle for https.
"""

import os
import uuid

import hvac
import pytest
import requests


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: point the suite at a server (see vault-dev/conformance/README.md)")
    return value


@pytest.fixture(scope="session")
def addr():
    return _env("VAULT_ADDR").rstrip("/")


@pytest.fixture(scope="session")
def root_token():
    return _env("VAULT_TOKEN")


@pytest.fixture(scope="session")
def verify():
    return os.environ.get("VAULT_CACERT") or True


@pytest.fixture(scope="session")
def client(addr, root_token, verify):
    vault = hvac.Client(url=addr, token=root_token, verify=verify)
    _enable(vault, "/v1/sys/mounts/transit", {"type": "transit"})
    _enable(vault, "/v1/sys/auth/approle", {"type": "approle"})
    return vault


def _enable(vault, path, body):
    """Enables an engine or auth method, accepting "already in use" (vault-dev has both from the start)."""
    response = requests.post(vault.url + path, json=body, headers={"X-Vault-Token": vault.token}, verify=vault.session.verify)
    if response.status_code not in (200, 204):
        assert response.status_code == 400 and "already in use" in response.text, response.text


@pytest.fixture
def key_name():
    return "k-" + uuid.uuid4().hex[:8]


@pytest.fixture
def raw(addr, root_token, verify):
    """Raw HTTP with the root token, for what hvac cannot show (status codes, headers, exact bodies)."""

    def call(method, path, token=root_token, **kwargs):
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers.setdefault("X-Vault-Token", token)
        return requests.request(method, addr + "/v1/" + path.lstrip("/"), headers=headers, verify=verify, **kwargs)

    return call
