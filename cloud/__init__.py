"""The fabpm cloud service (``fabpm cloud run``); training lives in :mod:`cloud.training`.

Modules, bottom up (nothing is imported here, so ``import cloud.training`` stays light)::

    errors      the error tree (CloudError and its kinds)
    intervals   Wilson's interval for a share measured on few cases
    config      CloudConfig, loaded once by the CLI
    storage     SQLAlchemy tables, Alembic migrations, Repo (transactions, de-duplication)
    mqtt        MqttLink: paho-mqtt 2 / MQTT 5, shared subscriptions, manual acks, TLS
    ingest      Ingestor: validate → dead letter or store once → labels → hard cases to verdicts
    labels      automatic labels from failures/maintenance, operator labels, history
    batcher     DynamicBatcher: max batch, max wait, bounded queue (refuses the newest when full)
    serving     FullModel replicas of the DGA (CUDA + autocast, or CPU; TorchScript-traced)
    verdicts    VerdictService: batch → model → store → publish Verdict
    registry    Registry: signed releases with lineage; announcements
    rollout     RolloutManager: canary → all, automatic rollback
    learning    Learner: persisted incremental-learning rounds (learning_data: Windows, Pipeline, split)
    pipeline_adapter   the production Pipeline over cloud.training.pipeline (+ ddp_finetune)
    auth, api   users, tokens, roles; the FastAPI app and the console (console/)
    metrics     Prometheus metrics of one worker
    service     CloudService: everything wired; run()
    cli         fabpm cloud run | keys | migrate | user add
"""
