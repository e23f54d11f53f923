"""matrix-nio (a real Matrix client library) against a real hushd.

nio's high-level key methods need libolm, so key upload and claim go through nio's own request
builders (`nio.Api`) and response parsers (`KeysUploadResponse`, `KeysClaimResponse`, schema
checked), sent by the client's transport. Registration, login, to-device sending and /sync use
the normal `AsyncClient` methods. Device and one-time keys are really signed (Ed25519 over
canonical JSON) so the objects look exactly like a client's.
"""

import asyncio
import base64
import json

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from nio import (
    Api,
    AsyncClient,
    KeysClaimResponse,
    KeysUploadResponse,
    LoginResponse,
    RegisterResponse,
    SyncResponse,
    ToDeviceMessage,
    ToDeviceResponse,
)

PASSWORD = "correct horse battery staple"
EVENT_TYPE = "org.hush.interop.test"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Device:
    """An Ed25519 device identity that signs its key objects like a Matrix client does."""

    def __init__(self, user_id: str, device_id: str):
        self.user_id = user_id
        self.device_id = device_id
        self.key = ECC.generate(curve="Ed25519")
        self.public = b64(self.key.public_key().export_key(format="raw"))

    def sign(self, obj: dict) -> dict:
        unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
        sig = eddsa.new(self.key, "rfc8032").sign(canonical(unsigned))
        signed = dict(obj)
        signed["signatures"] = {self.user_id: {f"ed25519:{self.device_id}": b64(sig)}}
        return signed

    def device_keys(self) -> dict:
        curve = b64(ECC.generate(curve="Ed25519").public_key().export_key(format="raw"))
        return self.sign(
            {
                "user_id": self.user_id,
                "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {
                    f"ed25519:{self.device_id}": self.public,
                    f"curve25519:{self.device_id}": curve,
                },
            }
        )

    def one_time_key(self) -> dict:
        key = b64(ECC.generate(curve="Ed25519").public_key().export_key(format="raw"))
        return self.sign({"key": key})


async def upload_keys(client: AsyncClient, body: dict) -> KeysUploadResponse:
    method, path, data = Api.keys_upload(client.access_token, body)
    resp = await client._send(KeysUploadResponse, method, path, data)
    assert isinstance(resp, KeysUploadResponse), resp
    return resp


async def claim_keys(client: AsyncClient, user_devices: dict) -> KeysClaimResponse:
    method, path, data = Api.keys_claim(client.access_token, user_devices)
    resp = await client._send(KeysClaimResponse, method, path, data)
    assert isinstance(resp, KeysClaimResponse), resp
    return resp


def events_of(resp: SyncResponse):
    return [e for e in resp.to_device_events if e.source.get("type") == EVENT_TYPE]


def test_register_login_keys_claim_to_device_sync(hushd):
    asyncio.run(scenario(hushd))


async def scenario(url: str):
    alice = AsyncClient(url, "alice")
    bob_reg = AsyncClient(url, "bob")
    bob = AsyncClient(url, "bob")
    try:
        # Registration (UIA, m.login.dummy) and password login.
        reg = await alice.register("alice", PASSWORD, device_name="nio alice")
        assert isinstance(reg, RegisterResponse), reg
        assert reg.user_id == "@alice:interop.test"
        reg = await bob_reg.register("bob", PASSWORD, device_name="nio bob (register)")
        assert isinstance(reg, RegisterResponse), reg
        login = await bob.login(PASSWORD, device_name="nio bob")
        assert isinstance(login, LoginResponse), login
        assert bob.user_id == "@bob:interop.test"
        assert bob.device_id and bob.device_id != bob_reg.device_id

        # Bob uploads signed device keys and two signed one-time keys.
        device = Device(bob.user_id, bob.device_id)
        otks = {
            "signed_curve25519:AAAAAQ": device.one_time_key(),
            "signed_curve25519:AAAAAg": device.one_time_key(),
        }
        up = await upload_keys(bob, {"device_keys": device.device_keys(), "one_time_keys": otks})
        assert up.signed_curve25519_count == 2

        # Alice claims one: the first uploaded, byte-for-byte as uploaded.
        claimed = await claim_keys(alice, {bob.user_id: [bob.device_id]})
        assert claimed.failures == {}
        keys = claimed.one_time_keys[bob.user_id][bob.device_id]
        assert list(keys) == ["signed_curve25519:AAAAAQ"]
        assert keys["signed_curve25519:AAAAAQ"] == otks["signed_curve25519:AAAAAQ"]

        # Bob's first sync: his key count went down to one.
        first = await bob.sync(timeout=0, full_state=True)
        assert isinstance(first, SyncResponse), first
        assert first.device_key_count.signed_curve25519 == 1

        # Alice sends a to-device message; Bob receives it through sync.
        sent = await alice.to_device(
            ToDeviceMessage(EVENT_TYPE, bob.user_id, bob.device_id, {"body": "hello bob", "n": 1})
        )
        assert isinstance(sent, ToDeviceResponse), sent
        got = await bob.sync(timeout=5000)
        assert isinstance(got, SyncResponse), got
        events = events_of(got)
        assert len(events) == 1, got.to_device_events
        assert events[0].source["sender"] == alice.user_id
        assert events[0].source["content"] == {"body": "hello bob", "n": 1}

        # A long-polling sync is woken by the next message; acknowledged ones do not return.
        poll = asyncio.create_task(bob.sync(timeout=20000))
        await asyncio.sleep(0.3)
        sent = await alice.to_device(
            ToDeviceMessage(EVENT_TYPE, bob.user_id, "*", {"body": "again", "n": 2})
        )
        assert isinstance(sent, ToDeviceResponse), sent
        woken = await asyncio.wait_for(poll, timeout=10)
        assert isinstance(woken, SyncResponse), woken
        events = events_of(woken)
        assert [e.source["content"]["n"] for e in events] == [2]
    finally:
        for client in (alice, bob_reg, bob):
            await client.close()
