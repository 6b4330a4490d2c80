"""Which errors a batch consumer retries (and how long) and which it isolates at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from asyncpg.exceptions import _base as asyncpg_base

from shared.kafka import is_transient


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg_base.DataError("invalid input for query argument $1: 1099511627776 (value out of int32 range)"),
        asyncpg.InterfaceError("the number of query arguments cannot exceed 32767"),
        asyncpg.DataError("invalid input for query argument $2: 'x'"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        MessageSizeTooLargeError(),
        ValueError("bad"),
        KeyError("k"),
    ],
)
def test_bad_data_and_bugs_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        OSError("network unreachable"),
        asyncio.TimeoutError(),
        asyncpg.PostgresConnectionError("connection failure"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.LockNotAvailableError("canceling statement due to lock timeout"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        KafkaConnectionError(),
        KafkaTimeoutError(),
    ],
)
def test_infrastructure_and_contention_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)
