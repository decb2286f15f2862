"""Whose address the per-caller limits count, against a real ``pda serve``: behind a proxy
named in ``PDA_TRUSTED_PROXIES`` each client has its own budget (the first untrusted
address of X-Forwarded-For, from the right); from anywhere else X-Forwarded-For is
ignored, so a client cannot forge its way to a fresh budget. The tests' connections come
from 127.0.0.1, which plays the proxy (an ingress controller's address)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from pda.settings import Settings
from tests.support.service import assert_problem

LIMIT = 3


def calls(server, n: int, forwarded: str | None) -> list[int]:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    return [server.http.get("/v1/models", headers=headers).status_code for _ in range(n)]


def limited(settings, start_server, **env: str):
    return start_server(settings, PDA_RATE_LIMIT_PER_MINUTE=str(LIMIT), **env)


def test_behind_a_trusted_proxy_each_client_has_its_own_budget(settings, start_server):
    server = limited(settings, start_server, PDA_TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8")
    # two callers behind the same proxy: separate budgets
    assert calls(server, LIMIT, "203.0.113.1") == [200] * LIMIT
    assert_problem(server.http.get("/v1/models",
                                   headers={"X-Forwarded-For": "203.0.113.1"}), 429,
                   "client address")
    assert calls(server, LIMIT, "203.0.113.2") == [200] * LIMIT
    # what the client wrote itself is left of what the proxies appended: a forged entry
    # there changes nothing (the first untrusted address from the right is still .1)
    assert calls(server, 1, "6.6.6.6, 203.0.113.1") == [429]
    # a chain of trusted proxies (10.0.0.0/8) is walked through to the client
    assert calls(server, 1, "203.0.113.1, 10.1.2.3") == [429]
    assert calls(server, 1, "198.51.100.7, 10.1.2.3") == [200]


def test_forwarded_addresses_from_an_untrusted_client_are_ignored(settings, start_server):
    # the default: no proxy trusted (uvicorn's own default would trust 127.0.0.1)
    server = limited(settings, start_server)
    statuses = [server.http.get("/v1/models", headers={
        "X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(LIMIT + 1)]
    assert statuses == [200] * LIMIT + [429]  # one caller: the connecting address


def test_a_proxy_list_that_does_not_name_the_peer_is_not_believed(settings, start_server):
    server = limited(settings, start_server, PDA_TRUSTED_PROXIES="10.0.0.0/8")
    assert calls(server, LIMIT + 1, "203.0.113.9") == [200] * LIMIT + [429]
    r = httpx.get(f"{server.url}/livez", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200  # probes are never limited


@pytest.mark.parametrize("value", ["*", "ingress", "10.0.0.0/33", "127.0.0.1,,nope"])
def test_a_trusted_proxy_is_an_address_or_a_network(value):
    with pytest.raises(ValidationError, match="not an IP address or CIDR network"):
        Settings(trusted_proxies=value)
    assert Settings(trusted_proxies=" 10.0.0.7, 10.244.0.0/16 ,::1").trusted_proxy_list == [
        "10.0.0.7", "10.244.0.0/16", "::1"]
