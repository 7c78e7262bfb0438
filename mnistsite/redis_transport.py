"""Kombu's Redis transport, keeping one Redis client per channel instead of building one for every command."""
from contextlib import contextmanager
from functools import cached_property

from kombu.transport import TRANSPORT_ALIASES, redis


class Channel(redis.Channel):
    @cached_property
    def _commands_client(self):
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client=None):
        # Kombu builds a client on the channel's pool for every publish, and for the bookkeeping of every message a
        # worker takes and acknowledges; redis-py fills a table of some 170 reply handlers for each (80 us here,
        # about as much as the command). A client holds no state of its own beyond its pool: one serves them all.
        yield client or self._commands_client

    def _disconnect_pools(self):
        # After a fork or on close Kombu drops the channel's pools; a client kept would hold on to the old one.
        self.__dict__.pop("_commands_client", None)
        super()._disconnect_pools()


class Transport(redis.Transport):
    Channel = Channel


def transport_install() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use this transport in this process."""
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
