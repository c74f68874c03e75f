#!/usr/bin/env python3
"""Writes envelope-v1.json: known-answer vectors for kmsd's envelope format v1 (docs/envelope-format.md).

This is an independent implementation of the format in Python, using the `cryptography` package's AES-GCM, so the
Swift code is checked against something it did not produce. Run: python3 generate.py > envelope-v1.json
"""
import json
import struct
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PROVIDERS = {"pkcs11": 0x01, "vault-transit": 0x02, "in-memory": 0x7F}


def header(provider, name, version, key_id):
    n = name.encode()
    return bytes([0x01, PROVIDERS[provider], len(n)]) + n + struct.pack(">I", version) + bytes([len(key_id)]) + key_id


def context_encoding(context):
    pairs = sorted(((k.encode(), v.encode()) for k, v in context.items()), key=lambda p: p[0])
    out = struct.pack(">H", len(pairs))
    for k, v in pairs:
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def envelope(head, iv, ciphertext):
    return head + bytes([len(iv)]) + iv + struct.pack(">H", len(ciphertext)) + ciphertext


def pattern(n, start):
    return bytes((start + 7 * i) % 256 for i in range(n))


valid_cases = [
    ("pkcs11, empty context", "pkcs11", "orders", 1, pattern(16, 1), {}),
    ("pkcs11, context sorted by key bytes", "pkcs11", "pg-cluster-7.tde", 42, pattern(16, 90),
     {"table": "orders", "cluster": "pg-7", "Zone": "eu-1"}),
    ("vault-transit, no key id, non-ASCII context", "vault-transit", "Orders_2024", 3, b"",
     {"b": "2", "a": "1", "\u00e9t\u00e9": "\u00e9", "Z": ""}),
    ("longest name, last version", "pkcs11", "k" * 63 + "9", 0xFFFFFFFF, pattern(32, 200), {"x": "y" * 1024}),
]

valid = []
for i, (description, provider, name, version, key_id, context) in enumerate(valid_cases):
    kek = pattern(32, 10 + i)
    iv = pattern(12, 50 + i)
    dek = pattern(32, 100 + i)
    head = header(provider, name, version, key_id)
    aad = head + context_encoding(context)
    ciphertext = AESGCM(kek).encrypt(iv, dek, aad)
    valid.append({
        "description": description, "provider": provider, "key": name, "version": version,
        "key_id": key_id.hex(), "context": context, "kek": kek.hex(), "iv": iv.hex(), "dek": dek.hex(),
        "header": head.hex(), "aad": aad.hex(), "envelope": envelope(head, iv, ciphertext).hex(),
    })

good_head = header("pkcs11", "orders", 1, pattern(16, 1))
good_iv = pattern(12, 3)
good_ct = pattern(48, 5)
good = envelope(good_head, good_iv, good_ct)
invalid = [
    ("empty", b"", "empty"),
    ("unsupported format", b"\x02" + good[1:], "unsupported format"),
    ("unknown provider", good[:1] + b"\x03" + good[2:], "unknown provider"),
    ("key name length 0", bytes([1, 1, 0]) + good[3:], "key name length 0"),
    ("key name length 65", bytes([1, 1, 65]) + b"a" * 65 + good[9:], "key name length 65"),
    ("key name with a slash", bytes([1, 1, 6]) + b"ord/rs" + good[9:], "key name is invalid"),
    ("key name not UTF-8", bytes([1, 1, 6]) + b"ord\xffrs" + good[9:], "not valid UTF-8"),
    ("version 0", good[:9] + b"\x00\x00\x00\x00" + good[13:], "key version 0"),
    ("key id length 65", good[:13] + bytes([65]) + b"\x00" * 65 + bytes([12]) + good_iv + struct.pack(">H", 48) + good_ct,
     "key id length 65"),
    ("IV length 11", good_head + bytes([11]) + good_iv[:11] + struct.pack(">H", 48) + good_ct, "IV length 11"),
    ("IV length 17", good_head + bytes([17]) + good_iv + b"\x00" * 5 + struct.pack(">H", 48) + good_ct, "IV length 17"),
    ("ciphertext shorter than a tag", good_head + bytes([12]) + good_iv + struct.pack(">H", 15) + good_ct[:15],
     "ciphertext length 15"),
    ("truncated in the key name", good[:6], "truncated: key name"),
    ("truncated in the version", good[:11], "truncated: key version"),
    ("truncated in the IV", good[:len(good_head) + 5], "truncated: IV"),
    ("truncated in the ciphertext", good[:-1], "truncated: ciphertext"),
    ("a trailing byte", good + b"\x00", "unexpected bytes"),
    ("oversized", good + b"\x00" * 5000, "at most"),
]

print(json.dumps({
    "format": "kmsd envelope v1 known-answer vectors; see docs/envelope-format.md",
    "valid": valid,
    "invalid": [{"description": d, "envelope": e.hex(), "error": m} for d, e, m in invalid],
}, indent=1, ensure_ascii=False))
