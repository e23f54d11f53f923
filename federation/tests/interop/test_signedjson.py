"""Interoperability of hush-federation with the Matrix reference Python libraries.

`signedjson` (Matrix's signed-JSON library, used by Synapse) and `canonicaljson` check Hush's
canonical JSON, signed objects, server key documents and X-Matrix request signatures, and Hush's
verifier checks objects, key documents and headers that signedjson made.

Hush is driven through the `signing_tool` example (one JSON command per stdin line). Set
HUSH_SIGNING_TOOL to the built binary, or leave it unset to have this file build it with
`cargo build -p hush-federation --example signing_tool`.

Run:  python -m pytest federation/tests/interop   (needs: pytest signedjson canonicaljson)
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from canonicaljson import encode_canonical_json
from signedjson.key import (
    decode_signing_key_base64,
    decode_verify_key_bytes,
    encode_signing_key_base64,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from unpaddedbase64 import decode_base64, encode_base64

REPO_ROOT = Path(__file__).resolve().parents[3]
APPENDIX_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"


def _build_tool() -> str:
    """Builds the example and returns the path of the executable cargo reports."""
    result = subprocess.run(
        ["cargo", "build", "-p", "hush-federation", "--example", "signing_tool",
         "--message-format=json"],
        cwd=REPO_ROOT, check=True, stdout=subprocess.PIPE,
    )
    for line in result.stdout.decode().splitlines():
        message = json.loads(line)
        if (message.get("reason") == "compiler-artifact"
                and message.get("target", {}).get("name") == "signing_tool"
                and message.get("executable")):
            return message["executable"]
    raise RuntimeError("cargo did not report the signing_tool executable")


@pytest.fixture(scope="session")
def tool():
    """Returns a function that runs one command through the Hush signing tool."""
    path = os.environ.get("HUSH_SIGNING_TOOL") or _build_tool()
    process = subprocess.Popen(
        [path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
    )

    def run(**command):
        process.stdin.write(json.dumps(command) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        assert line, "signing tool exited"
        return json.loads(line)

    yield run
    process.stdin.close()
    process.wait(timeout=10)


def ok(answer):
    assert answer["ok"], answer
    return answer


def fresh_key(version="a_1"):
    key = generate_signing_key(version)
    return key, encode_signing_key_base64(key)


# --- signed JSON -------------------------------------------------------------------------------

def test_appendix_vectors_match_signedjson(tool):
    key = decode_signing_key_base64("ed25519", "1", APPENDIX_SEED)
    for value in ({}, {"one": 1, "two": "Two"}):
        expected = sign_json(dict(value), "domain", key)
        ours = ok(tool(op="sign", seed=APPENDIX_SEED, entity="domain", key_id="ed25519:1",
                       value=value))["value"]
        assert ours == expected


def test_signedjson_verifies_our_signature(tool):
    key, seed = fresh_key("DEV")
    value = {"b": [1, {"z": None, "y": True}], "a": "日本語 \u2028 \x01 \"q\" \\",
             "unsigned": {"age": 3}, "n": -(2 ** 53 - 1)}
    signed = ok(tool(op="sign", seed=seed, entity="@alice:hs.example", key_id="ed25519:DEV",
                     value=value))["value"]
    assert signed["unsigned"] == {"age": 3}
    verify_key = get_verify_key(key)
    verify_signed_json(signed, "@alice:hs.example", verify_key)
    signed["b"][0] = 2
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(signed, "@alice:hs.example", verify_key)


def test_we_verify_signedjson_signature(tool):
    key, _ = fresh_key("k1")
    public = encode_verify_key_base64(get_verify_key(key))
    value = sign_json({"device_id": "DEV", "keys": {"ed25519:DEV": "x"}, "é": [0, 1],
                       "unsigned": {"x": 1}}, "@bob:hs.example", key)
    ok(tool(op="verify", public_key=public, entity="@bob:hs.example", key_id="ed25519:k1",
            value=value))
    # Padded signatures are accepted too.
    padded = json.loads(json.dumps(value))
    sig = padded["signatures"]["@bob:hs.example"]["ed25519:k1"]
    padded["signatures"]["@bob:hs.example"]["ed25519:k1"] = sig + "=="
    ok(tool(op="verify", public_key=public, entity="@bob:hs.example", key_id="ed25519:k1",
            value=padded))
    tampered = dict(value, device_id="OTHER")
    answer = tool(op="verify", public_key=public, entity="@bob:hs.example", key_id="ed25519:k1",
                  value=tampered)
    assert not answer["ok"]
    answer = tool(op="verify", public_key=public, entity="@eve:hs.example", key_id="ed25519:k1",
                  value=value)
    assert not answer["ok"]


# --- server key documents ----------------------------------------------------------------------

def test_signedjson_verifies_our_key_document(tool):
    _, seed = fresh_key()
    valid_until = int(time.time() * 1000) + 86_400_000
    document = ok(tool(op="key_document", seed=seed, version="a_Abc1", server_name="hs.example",
                       valid_until_ts=valid_until))["value"]
    assert document["server_name"] == "hs.example"
    assert document["old_verify_keys"] == {}
    assert document["valid_until_ts"] == valid_until
    assert set(document["signatures"]) == {"hs.example"}
    assert set(document["signatures"]["hs.example"]) == set(document["verify_keys"])
    for key_id, entry in document["verify_keys"].items():
        assert len(entry["key"]) == 43
        algorithm, version = key_id.split(":", 1)
        verify_key = decode_verify_key_bytes(key_id, decode_base64(entry["key"]))
        verify_signed_json(document, "hs.example", verify_key)
        assert algorithm == "ed25519" and version == "a_Abc1"


def test_we_verify_signedjson_key_document(tool):
    key, _ = fresh_key("a_py")
    document = {
        "server_name": "py.example:8448",
        "verify_keys": {"ed25519:a_py": {"key": encode_verify_key_base64(get_verify_key(key))}},
        "old_verify_keys": {},
        "valid_until_ts": int(time.time() * 1000) + 3_600_000,
    }
    signed = sign_json(document, "py.example:8448", key)
    answer = ok(tool(op="verify_key_document", value=signed, server_name="py.example:8448"))
    assert answer["key_ids"] == ["ed25519:a_py"]
    assert not tool(op="verify_key_document", value=signed, server_name="other.example")["ok"]
    expired = sign_json(dict(document, valid_until_ts=1000), "py.example:8448", key)
    assert not tool(op="verify_key_document", value=expired, server_name="py.example:8448")["ok"]


# --- X-Matrix request signatures ---------------------------------------------------------------

HEADER_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_strict_header(header):
    assert header.startswith("X-Matrix ")
    return dict(HEADER_PARAM.findall(header[len("X-Matrix "):]))


@pytest.mark.parametrize("method,uri,content", [
    ("PUT", "/_matrix/federation/v1/send/1690000000000",
     {"origin": "origin.example", "origin_server_ts": 1690000000000, "pdus": [],
      "edus": [{"edu_type": "m.direct_to_device",
                "content": {"sender": "@a:origin.example", "type": "m.room.encrypted",
                            "message_id": "m1", "messages": {"@b:dest.example": {"*": {}}}}}]}),
    ("GET", "/_matrix/federation/v1/user/devices/%40bob%3Adest.example?x=1&y=%2F", None),
    ("POST", "/_matrix/federation/v1/user/keys/claim",
     {"one_time_keys": {"@b:dest.example": {"DEV": "signed_curve25519"}}}),
])
def test_signedjson_verifies_our_xmatrix_signature(tool, method, uri, content):
    key, seed = fresh_key("a_x")
    command = dict(op="xmatrix_header", seed=seed, version="a_x", origin="origin.example",
                   destination="dest.example", method=method, uri=uri)
    if content is not None:
        command["content"] = content
    header = ok(tool(**command))["header"]
    params = parse_strict_header(header)
    assert params["origin"] == "origin.example"
    assert params["destination"] == "dest.example"
    assert params["key"] == "ed25519:a_x"
    # Rebuild the signed request as the Matrix specification's Python sample does.
    request = {"method": method, "uri": uri, "origin": "origin.example",
               "destination": "dest.example"}
    if content is not None:
        request["content"] = content
    request["signatures"] = {"origin.example": {params["key"]: params["sig"]}}
    verify_signed_json(request, "origin.example", get_verify_key(key))
    request["uri"] = uri + "x"
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(request, "origin.example", get_verify_key(key))


def signedjson_header(key, origin, destination, method, uri, content, style):
    request = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        request["content"] = content
    signed = sign_json(request, origin, key)
    key_id, sig = next(iter(signed["signatures"][origin].items()))
    if style == "synapse":
        return f'X-Matrix origin="{origin}",key="{key_id}",sig="{sig}",destination="{destination}"'
    # Liberal form: bare values, spaces, odd case.
    return f"x-matrix  Origin={origin} , SIG={sig},key={key_id}, destination = {destination}"


@pytest.mark.parametrize("style", ["synapse", "liberal"])
def test_we_verify_signedjson_xmatrix_header(tool, style):
    key, _ = fresh_key("a_py")
    public = encode_verify_key_base64(get_verify_key(key))
    content = {"device_keys": {"@bob:dest.example": []}}
    uri = "/_matrix/federation/v1/user/keys/query"
    header = signedjson_header(key, "py.example", "dest.example", "POST", uri, content, style)
    answer = ok(tool(op="xmatrix_verify", header=header, public_key=public, method="POST",
                     uri=uri, destination="dest.example", content=content))
    assert answer["origin"] == "py.example" and answer["key"] == "ed25519:a_py"
    # Wrong destination, wrong body, wrong method: refused.
    assert not tool(op="xmatrix_verify", header=header, public_key=public, method="POST",
                    uri=uri, destination="elsewhere.example", content=content)["ok"]
    assert not tool(op="xmatrix_verify", header=header, public_key=public, method="POST",
                    uri=uri, destination="dest.example", content={"device_keys": {}})["ok"]
    assert not tool(op="xmatrix_verify", header=header, public_key=public, method="PUT",
                    uri=uri, destination="dest.example", content=content)["ok"]


def test_we_verify_signedjson_get_header(tool):
    key, _ = fresh_key("a_py")
    public = encode_verify_key_base64(get_verify_key(key))
    uri = "/_matrix/federation/v1/user/devices/%40bob%3Adest.example"
    header = signedjson_header(key, "py.example", "dest.example", "GET", uri, None, "synapse")
    ok(tool(op="xmatrix_verify", header=header, public_key=public, method="GET", uri=uri,
            destination="dest.example"))
    assert not tool(op="xmatrix_verify", header=header, public_key=public, method="GET",
                    uri=uri, destination="dest.example", content={})["ok"]


# --- canonical JSON ----------------------------------------------------------------------------

TRICKY_INPUTS = [
    "{}",
    "[]",
    '{"b": "2", "a": "1"}',
    '{"本": 2, "日": 1}',
    '{"a": "\\u65E5"}',
    '{"\\ud83d\\ude00": 1, "\\uff61": 2, "a": 3, "B": 4, "": 5}',
    '{"s": "\\u0000\\u0001\\u001f\\b\\t\\n\\f\\r\\"\\\\/\\u007f\\u2028\\u2029é😀"}',
    '{"n": [9007199254740991, -9007199254740991, 0, -1, 1]}',
    '{"deep": {"z": {"y": {"x": [null, true, false, {"b": [], "a": {}}]}}}}',
    '{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": '
    '{"display_name": "John Doe", "three_pids": [{"medium": "email", "address": '
    '"john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}',
    '  {  "spaces" :  [ 1 , 2 ] , "tab\\t key" : "v"  }  ',
    '"just a string"',
    "12345",
]


@pytest.mark.parametrize("text", TRICKY_INPUTS)
def test_canonical_json_matches_canonicaljson(tool, text):
    ours = ok(tool(op="canonical", json_text=text))["canonical"]
    theirs = encode_canonical_json(json.loads(text)).decode("utf-8")
    assert ours == theirs


def test_canonical_json_spec_number_rules(tool):
    # The specification's own example: -0 and integral exponents become plain integers.
    assert ok(tool(op="canonical", json_text='{"a": -0, "b": 1e10}'))["canonical"] == \
        '{"a":0,"b":10000000000}'
    for bad in ("[1.5]", "[9007199254740992]", "[-9007199254740992]", "[1e300]"):
        assert not tool(op="canonical", json_text=bad)["ok"], bad


def test_key_encodings_agree(tool):
    key, seed = fresh_key()
    ours = ok(tool(op="public_key", seed=seed))["public_key"]
    assert ours == encode_verify_key_base64(get_verify_key(key))
    assert ours == encode_base64(decode_base64(ours))
