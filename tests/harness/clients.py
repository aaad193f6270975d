"""Clients of the emulator as our components make them: the sync `kubernetes` client."""

from __future__ import annotations

import kubernetes


def sync_api_client(url: str, user_agent: str = "aos-test", retries: int = 0) -> kubernetes.client.ApiClient:
    """An ApiClient for the emulator (or a client proxy) that identifies itself as `user_agent`.

    `retries` is urllib3's: with any retries left, urllib3 silently sleeps out a 429/503
    Retry-After and repeats the request (its default is 3), hiding injected faults; 0 shows them.
    """
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    configuration.retries = retries
    api_client = kubernetes.client.ApiClient(configuration)
    api_client.user_agent = user_agent
    return api_client
