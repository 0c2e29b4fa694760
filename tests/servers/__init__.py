"""Real PostgreSQL, Redis and RabbitMQ servers for the tests, run from the machine's binaries.

Each on free loopback ports with a directory of its own, started, stopped and killed through
its own process group (never by name). ``python -m tests.servers`` runs them by hand.
"""

from tests.servers.pool import KINDS, ServerPool, missing_binaries
from tests.servers.postgres_server import PostgresServer
from tests.servers.process import Server, ServerError, free_port
from tests.servers.rabbitmq_server import RabbitMQServer
from tests.servers.redis_server import RedisServer

__all__ = [
    "KINDS",
    "PostgresServer",
    "RabbitMQServer",
    "RedisServer",
    "Server",
    "ServerError",
    "ServerPool",
    "free_port",
    "missing_binaries",
]
