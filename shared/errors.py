"""The error tree of ``shared``.

::

    FabpmError
    ├── ConfigError          a config file or override is malformed; names the key
    ├── SchemaError          an MQTT payload failed validation; carries the reason
    ├── SignatureError       a model manifest or file does not verify
    └── DatasetError         an exported data set is missing or malformed

Each package (``edge``, ``cloud``, ``opcua_sim``) derives its own errors from ``FabpmError``.
"""


class FabpmError(Exception):
    """Root of every error fabpm raises on purpose."""


class ConfigError(FabpmError):
    """A config file, scenario or override is malformed; the message names the key."""


class SchemaError(FabpmError):
    """A message payload does not match its schema."""


class SignatureError(FabpmError):
    """A signed manifest or artifact failed verification."""


class DatasetError(FabpmError):
    """An exported data set is missing, of an unknown format, or inconsistent."""
