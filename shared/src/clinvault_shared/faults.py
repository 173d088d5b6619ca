"""Which failures are transient (a dependency is down or slow) rather than a bug or bad input.

The API answers these with 503 instead of 500; jobs retry them later instead of giving up.
"""

from __future__ import annotations

import asyncio
import errno

from sqlalchemy import exc as sa_exc

_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ENOTCONN,
    }
)


def is_transient(error: BaseException) -> bool:
    """True when `error` means a database, queue or blob store is unreachable right now."""
    from clinvault_shared.blobstore.errors import BlobStoreUnreachable, BlobUnavailable

    if isinstance(error, BlobUnavailable):
        # Destroyed keys, unknown objects and missing ciphertext are final answers, not outages.
        return isinstance(error, BlobStoreUnreachable)
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    if isinstance(error, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True
    if isinstance(error, ConnectionError | asyncio.TimeoutError | TimeoutError):
        return True
    if isinstance(error, OSError):
        # Only network-level errors: a missing file or a permission problem is not an outage
        # and must not be retried forever.
        return error.errno in _NETWORK_ERRNOS or (type(error) is OSError and error.errno is None)
    # redis-py and asyncpg errors that are not OSError subclasses, matched by name so that
    # shared does not import either client here.
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(
        names
        & {
            "ConnectionError",
            "TimeoutError",
            "BusyLoadingError",
            "ConnectionDoesNotExistError",
            "CannotConnectNowError",
            "InterfaceError",
            "ConnectionFailureError",
            "PostgresConnectionError",
        }
    )
