#!/usr/bin/env python3
"""Writes the seed corpora of federation/fuzz and server/fuzz (run from anywhere).

Seeds are real protocol inputs: spec examples, headers and bodies from the unit tests, and
objects, key documents and X-Matrix headers really signed with the fixed fuzz key (seed
[7; 32], the key the checks use), so the fuzzers start past the signature checks.
Needs the `cryptography` package. Re-running rewrites the seeds `seed_*` only.
"""
import base64
import json
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = os.path.dirname(os.path.abspath(__file__))
FED = os.path.join(HERE, "corpus")
SERVER = os.path.join(HERE, "..", "..", "server", "fuzz", "corpus")
KEY = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))


def b64(data):
    return base64.b64encode(data).decode().rstrip("=")


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sign(value, entity="a.example", key_id="ed25519:fuzz"):
    body = {k: v for k, v in value.items() if k not in ("signatures", "unsigned")}
    sig = b64(KEY.sign(canonical(body).encode()))
    value.setdefault("signatures", {}).setdefault(entity, {})[key_id] = sig
    return value


def xmatrix(method, uri, content=None, origin="a.example", destination="b.example"):
    obj = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    sig = b64(KEY.sign(canonical(obj).encode()))
    return (
        f'X-Matrix origin="{origin}",destination="{destination}",'
        f'key="ed25519:fuzz",sig="{sig}"'
    )


def write(root, target, seeds):
    directory = os.path.join(root, target)
    os.makedirs(directory, exist_ok=True)
    for index, seed in enumerate(seeds):
        data = seed if isinstance(seed, bytes) else (
            seed.encode() if isinstance(seed, str) else json.dumps(seed).encode())
        with open(os.path.join(directory, f"seed_{index:02}"), "wb") as f:
            f.write(data)


TO_DEVICE = {
    "sender": "@alice:a.example",
    "type": "m.room.encrypted",
    "message_id": "hiezohf6Hoo7kaev",
    "messages": {
        "@bob:b.example": {
            "BOBDEVICE": {"algorithm": "hush.v1", "sender_key": "K4m1Yk7I3zW8", "ciphertext": "AwgAEp"},
            "*": {"c": 1},
        },
        "@carol:c.example": {"CAROL": {"x": 1}},
    },
}
TRANSACTION = {
    "origin": "a.example",
    "origin_server_ts": 1690000000000,
    "pdus": [],
    "edus": [
        {"edu_type": "m.typing", "content": {"room_id": "!r"}},
        42,
        {"content": {}},
        {"edu_type": "m.direct_to_device", "content": TO_DEVICE},
        {"edu_type": "m.direct_to_device", "content": {"sender": "@mallory:x.example",
                                                       "type": "t", "message_id": "m",
                                                       "messages": {}}},
    ],
}
DEVICE_KEYS = {
    "user_id": "@alice:b.example",
    "device_id": "ALICEDEVICE",
    "algorithms": ["m.olm.v1.curve25519-aes-sha2", "hush.x3dh.v1"],
    "keys": {"curve25519:ALICEDEVICE": "3C5BFWi2Y8MaVvjM8M22DBmh24PmgR0nPvJOIArzgyI",
             "ed25519:ALICEDEVICE": "lEuiRJBit0IG6nUf5pUzWTUEsRVVe/HJkoKuEww9ULI"},
    "signatures": {"@alice:b.example": {"ed25519:ALICEDEVICE": "dSO80A01XiigH3uBiDVx/EjzaoycHcjq9lfQX0uWsqxl2giMIiSPR8a4d291W1ihKJL/a+myXS367WT6NAIcBA"}},
}
KEY_DOCUMENT = sign({
    "server_name": "a.example",
    "valid_until_ts": 4102444800000,
    "verify_keys": {"ed25519:fuzz": {"key": b64(KEY.public_key().public_bytes_raw())}},
    "old_verify_keys": {"ed25519:old": {"key": "VGhpcyBpcyBub3QgYSByZWFsIGtleSwganVzdCBhIHNlZWQ", "expired_ts": 1}},
})

write(FED, "xmatrix_header", [
    xmatrix("PUT", "/_matrix/federation/v1/send/1", {"edus": []}),
    xmatrix("GET", "/_matrix/federation/v1/user/devices/%40bob%3Ab.example"),
    'X-Matrix origin="a.example:8448",destination="b.example",key="ed25519:a_1",sig="c2ln+/"',
    'x-matrix ORIGIN="a.example:8448", Destination="b.example" ,Key="ed25519:a_1",  sig="c2ln+/"',
    "X-Matrix key=ed25519:a_1,sig=c2ln+/,origin=a.example:8448,destination=b.example",
    'X-Matrix   origin = "[::1]:8448" , destination="b.ex\\ample",key="ed25519:a_1",sig="c2ln+/",extra="x, y"',
    'X-Matrix origin=127.0.0.1:8008,,key="ed25519:a_1",sig="c2ln",unknown=1,',
    'X-Matrix origin="a.example",origin="b.example",key="k",sig="s"',
    'X-Matrix origin="unterminated',
    "Bearer syt_abc",
])
write(FED, "canonical_json", [
    {}, {"one": 1, "two": "Two"}, {"b": "2", "a": "1"},
    {"auth": {"success": True, "mxid": "@john.doe:example.com", "profile": {
        "display_name": "John Doe", "three_pids": [
            {"medium": "email", "address": "john.doe@example.org"},
            {"medium": "msisdn", "address": "123456789"}]}}},
    '{"a":"\u65e5\u672c\u8a9e"}', '{"\u672c":2,"\u65e5":1}', '{"a":"\\u65E5"}', '{"a":null}',
    '{"a":-0,"b":1e10,"c":-9007199254740991}', '{"a":9007199254740992}', '{"a":1.5}',
    '"\\u0000\\b\\f\\n\\r\\t\\u001f\\"\\\\\\/\\ud83d\\ude00"', '[[[[[[[[[[1]]]]]]]]]]',
    '{"a":1,"a":2}', '  [true , false,null ]  ',
])
signed_simple = sign({"one": 1, "two": "Two", "unsigned": {"age": 1}})
write(FED, "signed_json", [
    signed_simple, sign({}), KEY_DOCUMENT,
    {"signatures": {"domain": {"ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}},
    {"signatures": "nope"}, {"signatures": {"a.example": {"ed25519:fuzz": 5}}},
    {"a": 1.5, "signatures": {}}, DEVICE_KEYS,
])
write(FED, "ids", [
    "a.example", "a.example:8448", "127.0.0.1:8008", "[::1]:8448", "[1234:5678::abcd]",
    "localhost:00080", "a..b", "-a.example:", "@alice:a.example", "@Alice_=/+.-:b.example:8448",
    "@:a.example", "@al ice:a.example", "ALICEDEVICE", "dev\u00e9", "ed25519:a_Abc1",
    "c2lnbmF0dXJl", "c2lnbmF0dXJl==", "%40bob%3Ab.example", "*",
])
write(FED, "wire_bodies", [
    TRANSACTION, {"origin": "a.example", "origin_server_ts": 1},
    TO_DEVICE,
    {"device_keys": {"@bob:b.example": [], "@carol:b.example": ["CAROL"]}},
    {"device_keys": {"@bob:b.example": {"BOBDEVICE": DEVICE_KEYS}}},
    {"one_time_keys": {"@bob:b.example": {"BOBDEVICE": "signed_curve25519"}}},
    {"one_time_keys": {"@bob:b.example": {"BOBDEVICE": {"signed_curve25519:AAAAAQ": {"key": "zKbLg+NrIjpnagy+pIY6uPL4ZwEG2v+8F9lmgsnlZzs"}}}}},
    {"user_id": "@bob:b.example", "stream_id": 3, "devices": [{"device_id": "BOBDEVICE", "keys": DEVICE_KEYS, "device_display_name": "phone"}]},
    {"server": {"name": "hush", "version": "0.1.0"}},
    {"errcode": "M_FORBIDDEN", "error": "no"}, {"pdus": {}},
])

# Server corpora. client_bodies and client_router: first byte picks the endpoint.
write(SERVER, "fed_transaction", [
    TRANSACTION, {"origin": "b.example", "edus": []}, {"edus": "x"}, b"",
    {"edus": [{"edu_type": "m.direct_to_device", "content": dict(TO_DEVICE, message_id="")}]},
])
LOGIN = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
         "password": "correct horse", "device_id": "ALICEDEVICE", "initial_device_display_name": "laptop"}
REGISTER = {"username": "Alice", "password": "pw", "device_id": "D1", "inhibit_login": False,
            "auth": {"type": "m.login.dummy", "session": "abc"}}
SEND = {"messages": {"@bob:b.example": {"BOBDEVICE": {"ciphertext": "x"}, "*": {"c": 1}},
                     "@carol:c.example": {"CAROL": {}}}}
UPLOAD = {"device_keys": DEVICE_KEYS,
          "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "zKbLg+NrIjpnagy+pIY6uPL4ZwEG2v+8F9lmgsnlZzs",
                                                          "signatures": {"@alice:b.example": {"ed25519:ALICEDEVICE": "x"}}},
                            "curve25519:AAAAAg": "j3fR3HemM16M7CWhoI4Sk5ZsdmdfQHsKL1xuSft6MSw"},
          "fallback_keys": {"signed_curve25519:AAAAGj": {"key": "zKbL", "fallback": True}}}


def pick(selector, body):
    return bytes([selector]) + (body if isinstance(body, bytes) else json.dumps(body).encode())


write(SERVER, "client_bodies", [
    pick(0, LOGIN), pick(0, {"type": "m.login.password", "user": "@alice:b.example", "password": "p"}),
    pick(0, {"type": "m.login.token"}), pick(1, REGISTER), pick(1, {"username": "@bob:b.example"}),
    pick(2, SEND), pick(2, {"messages": []}), pick(3, UPLOAD), pick(3, b"not json"), pick(3, b"[1]"),
])
upload_fuzz = json.loads(json.dumps(UPLOAD).replace("@alice:b.example", "@fuzz:b.example"))
upload_fuzz["device_keys"]["device_id"] = "X"
write(SERVER, "client_router", [
    pick(0, upload_fuzz), pick(0, {"one_time_keys": {"signed_curve25519:AAAAAw": {"key": "k"}}}),
    pick(1, {"device_keys": {"@fuzz:b.example": [], "@peer:b.example": ["X"], "@z:c.example": []}, "timeout": 10}),
    pick(2, {"one_time_keys": {"@fuzz:b.example": {"X": "signed_curve25519"}, "@peer:b.example": {"Y": "hush.x3dh_bundle"}}}),
    pick(3, SEND), pick(3, {"messages": {"@fuzz:b.example": {"*": {"body": "hi"}}}}),
])
