"""The Redis broker transport builds one Redis client per channel, not one for every message published or taken."""
import uuid

import pytest
import redis
from kombu import Connection

from mnistsite.celery import app
from mnistsite.redis_transport import Transport


@pytest.fixture
def redis_broker_url() -> str:
    url = app.conf.broker_url
    if not url.startswith("redis://"):
        pytest.skip("the Redis transport is tested where the broker is Redis")
    return url


@pytest.fixture
def redis_clients_built(monkeypatch) -> list[int]:
    built = []
    original = redis.Redis.__init__

    def counted(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counted)
    return built


def test_celery_publishes_through_the_projects_redis_transport(redis_broker_url):
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)


def test_publishing_taking_and_acknowledging_messages_builds_no_redis_client_for_each(
    redis_broker_url, redis_clients_built
):
    queue_name = f"transport-test-{uuid.uuid4().hex}"
    with Connection(redis_broker_url) as connection:
        queue = connection.SimpleQueue(queue_name)
        try:
            for number in range(20):
                queue.put({"number": number})
            taken = []
            for _ in range(20):
                message = queue.get(timeout=5)
                taken.append(message.payload["number"])
                message.ack()
        finally:
            queue.clear()
            queue.close()

    assert taken == list(range(20))
    # The channel's clients (publishing, and the one taking messages) once each, whatever the number of messages.
    assert len(redis_clients_built) <= 3


def test_a_channel_whose_pools_kombu_dropped_builds_its_client_on_the_new_pool(redis_broker_url):
    # Kombu drops a channel's pools after a fork and on close; a client kept from before would use the old pool.
    with Connection(redis_broker_url) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as client:
            assert client.connection_pool is channel.pool
        channel._disconnect_pools()
        with channel.conn_or_acquire() as client:
            assert client.connection_pool is channel.pool
            assert client.ping()
