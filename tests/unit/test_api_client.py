"""kube/api.py api_client(): the HTTP session does not consult the environment on each
request (aiohttp would read the proxy variables and ~/.netrc in a worker thread per
request); the proxy variables are read once, with the same rules."""

from __future__ import annotations

import gc
import warnings

import pytest
from kubernetes_asyncio import client

from canary_operator.kube.api import api_client

HOST = "https://10.1.2.3:6443"


def configuration(proxy: str | None = None) -> client.Configuration:
    cfg = client.Configuration()
    cfg.host = HOST
    cfg.proxy = proxy
    return cfg


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                 "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


async def test_the_session_does_not_trust_the_environment_per_request() -> None:
    api = api_client(configuration())
    try:
        assert api.rest_client.pool_manager.trust_env is False
        assert api.rest_client.proxy is None
        assert api.rest_client.pool_manager.connector is not None
    finally:
        await api.close()


async def test_the_proxy_variables_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.internal:3128")
    api = api_client(configuration())
    try:
        assert api.rest_client.proxy == "http://proxy.internal:3128"
        auth = api.rest_client.proxy_headers["Proxy-Authorization"]
        assert auth.startswith("Basic ")
    finally:
        await api.close()


async def test_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    api = api_client(configuration())
    try:
        assert api.rest_client.proxy is None
    finally:
        await api.close()


async def test_a_kubeconfig_proxy_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    api = api_client(configuration(proxy="http://from-kubeconfig:8080"))
    try:
        assert api.rest_client.proxy == "http://from-kubeconfig:8080"
    finally:
        await api.close()


async def test_the_replaced_session_is_not_left_unclosed() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api = api_client(configuration())
        await api.close()
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)]
