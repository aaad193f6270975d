"""Clients of the emulator as our components make them: the sync `kubernetes` client."""

from __future__ import annotations

import kubernetes


def sync_api_client(url: str, user_agent: str = "aos-test") -> kubernetes.client.ApiClient:
    """An ApiClient for the emulator (or a client proxy) that identifies itself as `user_agent`."""
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    # One retry at most: fault-injection tests must see failures, not urllib3 hiding them.
    configuration.retries = 1
    api_client = kubernetes.client.ApiClient(configuration)
    api_client.user_agent = user_agent
    return api_client
