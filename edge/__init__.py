"""The fabpm edge daemon (``fabpm edge run``): OPC UA in, ONNX models, MQTT out. No torch.

Modules, bottom to top::

    errors      the error tree (EdgeError and its children)
    config      EdgeConfig, load_edge_config
    outbox      Outbox: SQLite WAL disk queue with priorities and a quota policy
    mqtt        MqttRelay: paho-mqtt 2.x, MQTT 5, drains the outbox, receives commands
    source      TagSource protocol, AsyncuaSource, tag_table
    windows     ToolWindow: per-tool rows on the model's time grid
    inference   RiskModel, TuningModel (onnxruntime)
    decisions   Decider (alert rule, hard cases under a token bucket), message()
    pipeline    Pipeline: values → windows → batched inference → decisions
    updates     Updater, ModelStore: signed model updates, atomic swap, rollback
    tuning      SetpointGuard, Tuner, OutcomeGuard, EwmaController
    control     SetpointControl: tuning after each lot, approvals, the eco rule
    metrics     EdgeMetrics, /metrics and /health
    daemon      EdgeDaemon: the wiring, supervised loops, APScheduler jobs
    discover    discover(): a starting config from a server's address space
    cli         ``fabpm edge run|discover``

Nothing is re-exported here on purpose: ``import edge.config`` (the CLI's first step, and the
cloud-free tools) must not pull in asyncua, onnxruntime and paho.
"""
