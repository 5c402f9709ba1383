"""The error tree of ``opcua_sim``.

::

    FabpmError (shared.errors)
    └── SimError                 anything the simulator refuses on purpose
        ├── ScenarioError        a scenario file or flag is malformed; names the field
        │   └── UnknownToolTypeError   a tool type the catalog does not know
        ├── FaultError           InjectFault named a mode the tool does not have
        ├── SetpointError        a setpoint write outside its engineering range (BadOutOfRange)
        └── SecurityError        certificates or user settings cannot be set up

``ScenarioError`` also derives from ``shared.errors.ConfigError`` so callers that catch config
errors in general catch it too.
"""

from __future__ import annotations

from shared.errors import ConfigError, FabpmError


class SimError(FabpmError):
    """Root of the simulator's errors."""


class ScenarioError(SimError, ConfigError):
    """A scenario (file or flags) is malformed; the message names the field."""


class UnknownToolTypeError(ScenarioError):
    """A scenario names a tool type that ``shared.equipment`` does not define."""


class FaultError(SimError):
    """A fault was requested for a mode the tool does not have."""


class SetpointError(SimError):
    """A setpoint write outside the tag's engineering range, or to an unknown setpoint."""


class SecurityError(SimError):
    """Certificates, keys or the user list cannot be prepared."""
