"""Which webhook URLs the service sends to (SSRF): http or https, and a host that
resolves only to public addresses unless ``OBLIVIATE_WEBHOOK_ALLOW_PRIVATE`` is on.
Checked at registration and again at every delivery (DNS may change in between)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from core.errors import InvalidRequest
from core.net import IPAddress, UnresolvableHost, first_forbidden, resolve_addresses

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class CheckedUrl:
    """A webhook URL and the addresses its host resolved to when it was checked: a
    sender connects to ``addresses[0]``, not to whatever a second lookup says."""

    parts: SplitResult
    addresses: list[IPAddress]

    @property
    def host(self) -> str:
        return self.parts.hostname or ""

    @property
    def port(self) -> int:
        return self.parts.port or DEFAULT_PORTS[self.parts.scheme]


def check_webhook_url(url: str, *, allow_private: bool, param: str = "url") -> CheckedUrl:
    """Raise InvalidRequest (``invalid_webhook_url``, ``unresolvable_webhook_url`` or
    ``forbidden_webhook_url``) for a URL the service must not send to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(
            f"{param}: not a valid URL ({exc})", param=param, code="invalid_webhook_url"
        ) from None
    if parts.scheme not in SCHEMES:
        raise InvalidRequest(
            f"{param}: a webhook URL must be http:// or https://, not {parts.scheme or 'none'}",
            param=param,
            code="invalid_webhook_url",
        )
    if not parts.hostname:
        raise InvalidRequest(
            f"{param}: the URL has no host", param=param, code="invalid_webhook_url"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(
            f"{param}: credentials in the URL are not accepted; authenticate deliveries "
            "with their signature (docs/webhooks.md)",
            param=param,
            code="invalid_webhook_url",
        )
    try:
        addresses = resolve_addresses(parts.hostname, port or DEFAULT_PORTS[parts.scheme])
    except UnresolvableHost:
        raise InvalidRequest(
            f"{param}: cannot resolve host {parts.hostname!r}",
            param=param,
            code="unresolvable_webhook_url",
        ) from None
    forbidden = first_forbidden(addresses)
    if forbidden is not None and not allow_private:
        raise InvalidRequest(
            f"{param}: {parts.hostname} resolves to {forbidden}, a loopback, private, "
            "link-local, multicast or unspecified address; webhooks go to public addresses "
            "only (OBLIVIATE_WEBHOOK_ALLOW_PRIVATE)",
            param=param,
            code="forbidden_webhook_url",
        )
    return CheckedUrl(parts, addresses)
