"""The error tree of ``cloud``.

::

    FabpmError (shared.errors)
    └── CloudError
        ├── StorageError        the database is unreachable or a migration failed
        ├── BrokerError         the MQTT broker refused us or did not answer in time
        ├── QueueFullError      the verdict batcher's bounded queue is full (overflow policy: reject)
        ├── ModelError          no full model to serve, or a checkpoint that does not load
        ├── AuthError           bad credentials or a token that expired
        │   ├── LoginThrottled  too many failed logins from one client for one user: wait
        │   └── UnknownUser     no user of that name
        ├── RegistryError       a model that does not verify, or an unknown version
        ├── RolloutError        a rollout that cannot start or continue
        ├── ShelvingError       a shelf without a reason or longer than the limit
        └── LearningError       an incremental-learning step failed; the round records which
"""

from __future__ import annotations

from shared.errors import FabpmError


class CloudError(FabpmError):
    """Root of the cloud's errors."""


class StorageError(CloudError):
    """The database cannot be reached, or its schema cannot be brought up to date."""


class BrokerError(CloudError):
    """The MQTT broker refused the connection or did not answer within the timeout."""


class QueueFullError(CloudError):
    """The batcher's queue is full; the case stays stored without a verdict and is retried later."""


class ModelError(CloudError):
    """No full model is loaded, or a checkpoint does not load."""


class AuthError(CloudError):
    """Wrong user name or password, an unknown token, or an expired one."""


class LoginThrottled(AuthError):
    """Too many failed logins for this user from this client; ``retry_after_s`` says how long."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed logins: try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class UnknownUser(AuthError):
    """No user of that name (for removal: a 404, where the last admin is a 409)."""


class RegistryError(CloudError):
    """A model release that does not verify, or an unknown version."""


class RolloutError(CloudError):
    """A rollout that cannot start (unknown version, one already running) or continue."""


class LearningError(CloudError):
    """An incremental-learning step failed; the round stores the step and the reason."""


class ShelvingError(CloudError):
    """A tool shelved without a reason or for longer than allowed: the message says what to change."""
