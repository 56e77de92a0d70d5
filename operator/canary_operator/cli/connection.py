"""How `canary-operator run` finds its cluster: `--kubeconfig`/`--context`, checked
before kopf starts, then handed to both API clients (kopf's watches and ours).

kopf logs in by itself (in-cluster, else the default kubeconfig) and the startup
handler builds our client with `kube.api.load_config()`; neither takes arguments.
So the choice travels in environment variables that `load_config` reads, and a
kopf login handler (registered only for an explicit choice) uses the same config.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import yaml
from kubernetes_asyncio import config

from canary_operator.kube.api import CONTEXT_ENV, KUBECONFIG_ENV, load_config


class ConfigError(Exception):
    """No usable cluster configuration; the message is one line for the user."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


async def _check(kubeconfig: str | None, context: str | None) -> str:
    """Load the configuration as the operator will; returns the API server's URL."""
    api_client = await load_config(kubeconfig, context)
    try:
        return str(api_client.configuration.host)
    finally:
        await api_client.close()


def check_config(kubeconfig: str | None, context: str | None) -> str:
    """Raise ConfigError unless the configuration the operator would use loads.

    Catches what the kubeconfig loader raises for a missing or unreadable file, bad
    YAML, an unknown context or a half-defined user/cluster entry."""
    if kubeconfig is not None and not os.path.isfile(kubeconfig):
        raise ConfigError(f"kubeconfig {kubeconfig}: no such file")
    where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        where = "in-cluster service account"
    try:
        return asyncio.run(_check(kubeconfig, context))
    except (
        config.ConfigException,
        yaml.YAMLError,
        OSError,
        KeyError,
        ValueError,
        TypeError,
    ) as exc:
        suffix = f" (context {context})" if context else ""
        raise ConfigError(
            f"no usable Kubernetes configuration in {where}{suffix}: {_one_line(exc)}"
        ) from exc


def use_config(kubeconfig: str | None, context: str | None, registry: Any = None) -> None:
    """Make both clients use this kubeconfig/context (call before `kopf.run`;
    `registry`: kopf's default registry unless given)."""
    if kubeconfig is None and context is None:
        return  # kopf's and our defaults agree: in-cluster, else the default kubeconfig
    import kopf

    if kubeconfig is not None:
        os.environ[KUBECONFIG_ENV] = os.path.abspath(kubeconfig)
    if context is not None:
        os.environ[CONTEXT_ENV] = context

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> Any:
        return await connection_info()


async def connection_info() -> Any:
    """kopf's credentials from the same configuration `load_config` builds."""
    import kopf

    api_client = await load_config()
    try:
        cfg = api_client.configuration
        # Awaitable in current kubernetes_asyncio (token files, exec plugins refresh).
        maybe_header: Any = cfg.get_api_key_with_prefix("BearerToken")
        header: str | None = (
            await maybe_header if inspect.isawaitable(maybe_header) else maybe_header
        )
        parts = header.split(" ", 1) if header else []
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, header or None)
        return kopf.ConnectionInfo(
            server=str(cfg.host),
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            username=cfg.username or None,
            password=cfg.password or None,
            scheme=scheme,
            token=token,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            proxy_url=cfg.proxy,
        )
    finally:
        await api_client.close()
