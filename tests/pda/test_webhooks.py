"""pda/webhooks.py: signatures a Standard Webhooks library verifies, the allow list at
submit and at delivery, and one request against a real HTTP server on loopback."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from pda import webhooks
from pda.errors import CallbackNotAllowedError
from tests.support.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_the_signature_verifies_with_the_standard_webhooks_library():
    body = b'{"type":"explanation.finished","data":{"id":"x"}}'
    key = webhooks.secret_bytes(SECRET)
    headers = webhooks.headers(key, "msg_1", body)
    assert Webhook(SECRET).verify(body, headers) == {"type": "explanation.finished",
                                                     "data": {"id": "x"}}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"x", b"y"), headers)
    other = "whsec_" + base64.b64encode(b"another secret, 32 bytes long!!!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_the_signature_is_the_documented_hmac():
    # v1, + base64(HMAC-SHA256(key, "id.timestamp.body")): the spec's example values
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert webhooks.sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("secret, why", [
    ("abc", "whsec_"), ("whsec_***", "base64"), ("whsec_" + base64.b64encode(b"short").decode(),
                                                 "16 bytes")])
def test_a_malformed_secret_says_what_is_wrong(secret, why):
    with pytest.raises(ValueError, match=why):
        webhooks.secret_bytes(secret)


def test_the_allow_list_takes_names_wildcards_and_ranges():
    allow = webhooks.Allowlist.parse(" hooks.example.com, *.corp.example , 10.1.0.0/16,::1 ,")
    assert allow.names == ("hooks.example.com", "*.corp.example")
    assert [str(n) for n in allow.networks] == ["10.1.0.0/16", "::1/128"]
    assert allow.name_allowed("HOOKS.example.com.") and allow.name_allowed("a.b.corp.example")
    assert not allow.name_allowed("corp.example") and not allow.name_allowed("evil.com")
    assert webhooks.Allowlist.parse("").empty
    with pytest.raises(ValueError, match="neither a host name nor a CIDR"):
        webhooks.Allowlist.parse("http://x.com/")


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/pda?x=1", "http://10.1.2.3:8080/", "http://[::1]:9/x"])
def test_allowed_urls_pass_at_submit(url):
    allow = webhooks.Allowlist.parse("hooks.example.com,10.1.0.0/16,::1")
    assert allow.check_url(url) == url


@pytest.mark.parametrize("url, why", [
    ("https://other.example.com/", "'other.example.com': it is not in"),
    ("http://10.2.0.1/", "10.2.0.1: it is not in"),
    ("http://127.0.0.1/", "127.0.0.1: it is not in"),
    ("ftp://hooks.example.com/", "http:// or https://"),
    ("https://u:p@hooks.example.com/", "credentials"),
    ("https://hooks.example.com/a b", "spaces"),
    ("https://hooks.example.com:99999/", "not a valid URL"),
    ("https://hooks.example.com/" + "a" * 2000, "at most 2000"),
])
def test_other_urls_are_refused_at_submit_saying_why(url, why):
    allow = webhooks.Allowlist.parse("hooks.example.com,10.1.0.0/16")
    with pytest.raises(CallbackNotAllowedError, match=why):
        allow.check_url(url)


def test_an_allowed_name_that_resolves_to_a_private_address_is_refused_at_delivery():
    # DNS rebinding: the name passed at submit; at delivery it resolves to loopback,
    # which only a listed range admits
    target = webhooks.Target.of("http://localhost:9/")
    with pytest.raises(webhooks.Refused, match="localhost resolves to .*not an address"):
        webhooks.resolve(target, webhooks.Allowlist.parse("localhost"))
    assert str(webhooks.resolve(target, webhooks.Allowlist.parse(
        "localhost,127.0.0.0/8,::1"))) in ("127.0.0.1", "::1")
    mapped = webhooks._literal("::ffff:169.254.169.254")
    assert not webhooks.Allowlist.parse("localhost").address_allowed(mapped, by_name=True)


def test_post_sends_the_body_and_headers_and_returns_the_status():
    rx = Receiver(answers=[503])
    try:
        allow = webhooks.Allowlist.parse("127.0.0.1")
        status = webhooks.post(f"{rx.url}/hook?a=1", b'{"x":1}', {"webhook-id": "msg_1"},
                               allow, timeout=5)
        assert status == 503
        (got,) = rx.events()
        assert got.path == "/hook?a=1" and got.body == b'{"x":1}'
        assert got.headers["webhook-id"] == "msg_1"
        assert got.headers["content-type"] == "application/json"
        assert got.headers["host"] == f"127.0.0.1:{rx.port}"
    finally:
        rx.close()


def test_a_redirect_is_not_followed():
    rx = Receiver(answers=[302], headers_out={"Location": "/elsewhere"})
    try:
        status = webhooks.post(rx.url, b"{}", {}, webhooks.Allowlist.parse("127.0.0.1"),
                               timeout=5)
        assert status == 302
        assert [r.path for r in rx.events()] == ["/"]
    finally:
        rx.close()


def test_the_answer_is_read_only_up_to_the_cap():
    rx = Receiver(body_out=b"x" * (64 * 1024 * 1024))
    try:
        started = time.monotonic()
        status = webhooks.post(rx.url, b"{}", {}, webhooks.Allowlist.parse("127.0.0.1"),
                               timeout=5)
        assert status == 200 and time.monotonic() - started < 5
        from tests.support.waiting import wait_until

        wait_until("the receiver's write to end", lambda: rx.body_sent, timeout=20)
        assert rx.body_sent == [False]  # the 64 MB never went out: the client hung up
    finally:
        rx.close()


def test_a_receiver_that_never_answers_times_out():
    rx = Receiver(answers=[0])
    try:
        started = time.monotonic()
        with pytest.raises(OSError):
            webhooks.post(rx.url, b"{}", {}, webhooks.Allowlist.parse("127.0.0.1"),
                          timeout=0.5)
        assert time.monotonic() - started < 2.5
    finally:
        rx.close()


def test_a_refused_connection_is_an_oserror():
    from tests.support.servers import free_port

    with pytest.raises(ConnectionRefusedError):
        webhooks.post(f"http://127.0.0.1:{free_port()}/", b"{}", {},
                      webhooks.Allowlist.parse("127.0.0.1"), timeout=2)
