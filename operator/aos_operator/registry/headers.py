"""Checks on values that servers and credential files put into our HTTP headers and URLs.

A value with CR, LF, NUL or another control character would split a header or a request line
(http.client refuses them with a bare ValueError); a Location or realm that is not an http(s)
URL, or holds spaces, is no place to send a request. Each is refused with an error that names
where the value came from and shows it cut to a readable length.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aos_operator.errors import RegistryError, shorten

# RFC 6750's b64token, widened to every visible ASCII character: what a token may hold.
_VISIBLE_ASCII = frozenset(chr(code) for code in range(0x21, 0x7F))


def bad_character(value: str, *, allow_space: bool = False) -> str | None:
    """A description of the first character of `value` that cannot go into a header, or None."""
    for character in value:
        if character == " " and allow_space:
            continue
        if character not in _VISIBLE_ASCII:
            code = ord(character)
            if character in "\r\n":
                return "a line break (CR/LF)"
            if code == 0:
                return "a NUL byte"
            if code < 0x20 or code == 0x7F:
                return f"the control character 0x{code:02x}"
            if character == " ":
                return "a space"
            return f"the non-ASCII character U+{code:04X}"
    return None


def check_token(value: str, realm: str, what: str) -> str:
    problem = bad_character(value)
    if problem:
        raise RegistryError(
            f"{what}: the token from {shorten(realm, 200)} holds {problem}; refusing to put it into a header",
            hint="the token service answers with a broken or hostile token; check its configuration",
        )
    return value


def check_url(value: str, what: str, source: str) -> str:
    """An absolute http(s) URL (or a path, for a Location) without spaces or control characters."""
    problem = bad_character(value)
    try:
        parts = urlsplit(value) if problem is None else None
    except ValueError as error:  # e.g. "Invalid IPv6 URL": an unbalanced bracket
        problem, parts = f"an unparsable address ({error})", None
    if parts is not None and parts.scheme and parts.scheme.lower() not in ("http", "https"):
        problem = f"the scheme {parts.scheme!r} (only http and https are followed)"
    elif parts is not None and parts.scheme and not parts.hostname:
        problem = "no host"
    if problem:
        raise RegistryError(
            f"{what}: the registry's {source} {shorten(value)!r} holds {problem}; not following it",
            hint="the registry (or something between) sent a broken or hostile value",
        )
    return value


def check_location(value: str, what: str) -> str:
    return check_url(value, what, "Location header")


def check_realm(value: str, host: str, what: str) -> str:
    check_url(value, what, f"token realm (WWW-Authenticate of {host})")
    if not urlsplit(value).scheme:
        raise RegistryError(
            f"{what}: the token realm {shorten(value)!r} of {host} is not an absolute http(s) URL",
            hint="the registry's auth configuration names no usable token service",
        )
    return value
