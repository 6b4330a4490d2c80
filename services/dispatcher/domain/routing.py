"""Which gateway a message goes to: ordered gateway lists chosen by rules, with failover.

A route matches on the destination country, number prefix and message type; the first
matching route gives the gateways in order of preference. The first one that is healthy
(and that this message has not just failed on) is chosen; if none is, the first one is
tried anyway rather than holding the message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shared.contracts import MessageOutbound


@dataclass(frozen=True)
class Route:
    name: str
    gateways: tuple[str, ...]
    countries: frozenset[str] = frozenset()  # ISO alpha-2; empty = any
    prefixes: tuple[str, ...] = ()  # E.164 prefixes such as "+3467"; empty = any
    types: frozenset[str] = frozenset()  # transactional / marketing; empty = any

    def matches(self, message: MessageOutbound) -> bool:
        return (
            (not self.countries or message.country in self.countries)
            and (not self.prefixes or message.to.startswith(self.prefixes))
            and (not self.types or message.type.value in self.types)
        )


@dataclass(frozen=True)
class Choice:
    gateway: str
    route: str
    skipped: tuple[str, ...]  # preferred gateways passed over (unhealthy or just failed)

    @property
    def failover(self) -> bool:
        return bool(self.skipped)

    def detail(self) -> dict[str, str]:
        detail = {"route": self.route}
        if self.skipped:
            detail["failover_from"] = ",".join(self.skipped)
        return detail


SANDBOX_ROUTE = Route("sandbox", ("sandbox",))  # test-key messages, and only they (gateways/sandbox.py)


class Router:
    def __init__(self, routes: Iterable[Route], default_gateways: tuple[str, ...]) -> None:
        self.routes = tuple(routes)
        self.default = Route("default", default_gateways)
        known = set(default_gateways)
        if set(SANDBOX_ROUTE.gateways) & known:
            raise ValueError("the gateway name 'sandbox' is reserved for test keys")
        for route in self.routes:
            unknown = set(route.gateways) - known
            if unknown:
                raise ValueError(f"route {route.name!r} names unknown gateways {sorted(unknown)}")

    def route_for(self, message: MessageOutbound) -> Route:
        # A test key's message goes to the sandbox whatever the rules say, failover and
        # reconciliation included; no configured route can name the sandbox.
        if message.sandbox:
            return SANDBOX_ROUTE
        return next((r for r in self.routes if r.matches(message)), self.default)

    def choose(self, message: MessageOutbound, available: Callable[[str], bool], avoid: frozenset[str] = frozenset()) -> Choice:
        route = self.route_for(message)
        skipped: list[str] = []
        for gateway in route.gateways:
            if gateway not in avoid and available(gateway):
                return Choice(gateway, route.name, tuple(skipped))
            skipped.append(gateway)
        # Nothing healthy: try the first gateway not just failed on, else the first one.
        fallback = next((g for g in route.gateways if g not in avoid), route.gateways[0])
        return Choice(fallback, route.name, route.gateways[: route.gateways.index(fallback)])
