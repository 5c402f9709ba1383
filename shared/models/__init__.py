"""Torch model definitions (imported only by the cloud and the trainer, never by the edge).

Importing ``shared.models`` itself is cheap: it imports nothing; use the submodules::

    from shared.models.dga import DGA, DGAConfig          # the DGA transformer (DESIGN.md §5)
    from shared.models.checkpoint import save_checkpoint, load_checkpoint
    from shared.models.tuning_net import TuningNet, TuningConfig

Errors: :class:`shared.models.checkpoint.CheckpointError` (a ``FabpmError``) for unreadable or
inconsistent checkpoints.
"""
