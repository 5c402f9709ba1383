"""What the edge, the cloud and the simulator share: config, schemas, topics, features, signing.

Importing ``shared`` (or any module the edge uses) never imports torch; the torch model
definitions live in ``shared.models`` and are imported only by the cloud and the trainer.
"""
