"""Helpers for tests and benchmarks: throw-away databases, a tiny full-model checkpoint, messages.

``fresh_database("sqlite" | "postgres", folder, pg_url)`` yields a URL of an empty database: a
new SQLite file, or a new schema of the PostgreSQL database at ``pg_url`` (dropped afterwards),
so one test body runs against both.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from sqlalchemy import create_engine, text

from cloud.config import RegistryConfig
from shared.messages import Event, HardCase, encode_array
from shared.signing import generate_keypair, load_private_key, write_release


@contextmanager
def fresh_database(kind: str, folder: Path, pg_url: str | None = None) -> Iterator[str]:
    """A URL of an empty database of ``kind``; PostgreSQL gets a unique schema, dropped at the end."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'cloud-{uuid.uuid4().hex[:8]}.db'}"
        return
    if not pg_url:
        raise ValueError("postgres needs a URL")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in pg_url else "?"
        yield f"{pg_url}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def tiny_full_checkpoint(
    path: Path,
    n_features: int = 8,
    window: int = 16,
    modes: tuple[str, ...] = ("wear", "leak"),
    seed: int = 0,
    version: str = "full-test",
    **cfg: Any,
) -> Path:
    """Save a randomly initialised small DGA checkpoint (for serving tests and benchmarks)."""
    import torch

    from shared.models.checkpoint import save_checkpoint
    from shared.models.dga import DGA, DGAConfig

    torch.manual_seed(seed)
    sizes: dict[str, Any] = {
        "d_model": 32,
        "n_heads": 2,
        "n_layers": 1,
        "d_ff": 64,
        "embed_dim": 8,
        "dropout": 0.0,
    }
    sizes.update(cfg)
    model = DGA(DGAConfig(n_features=n_features, window=window, n_modes=len(modes), **sizes))
    return save_checkpoint(path, model, {"modes": list(modes), "version": version, "metrics": {}})


def hardcase(
    edge: str = "edge-1",
    site: str = "fab1",
    tool: str = "etch-01",
    window_ts: float = 1000.0,
    steps: int = 16,
    n_features: int = 8,
    seed: int = 0,
    case_id: str | None = None,
) -> HardCase:
    rng = np.random.default_rng(seed)
    window = rng.standard_normal((steps, n_features)).astype(np.float32)
    return HardCase(
        schema=HardCase.SCHEMA,
        edge_id=edge,
        site=site,
        case_id=case_id or uuid.uuid4().hex,
        tool_id=tool,
        tool_type="plasma_etch",
        window_ts=window_ts,
        features=encode_array(window),
        shape=(steps, n_features),
        edge_prediction={"probs": {"wear": 0.5}, "rul_h": 40.0, "rul_std_h": 30.0, "novelty": 0.1},
        reasons=["margin"],
        model_version="edge-0",
    )


def failure(
    tool: str, source_ts: float, mode: str = "wear", edge: str = "edge-1", site: str = "fab1"
) -> Event:
    return Event(
        schema=Event.SCHEMA,
        edge_id=edge,
        site=site,
        tool_id=tool,
        event="failure",
        mode=mode,
        source_ts=source_ts,
    )


def maintenance(tool: str, source_ts: float, edge: str = "edge-1", site: str = "fab1") -> Event:
    return Event(
        schema=Event.SCHEMA, edge_id=edge, site=site, tool_id=tool, event="maintenance", source_ts=source_ts
    )


def signed_release(
    registry: RegistryConfig,
    folder: Path,
    version: str = "v1",
    input_spec: dict[str, Any] | None = None,
    content: bytes = b"an edge model",
    thresholds: dict[str, float] | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """An edge-risk release of ``content`` (bytes, not a model) signed with the registry's key
    (a key pair is made when there is none), its manifest beside it: what the registry accepts;
    ``thresholds`` and ``metrics`` go into the manifest as given."""
    if not registry.private_key.exists():
        generate_keypair(registry.private_key, registry.public_key)
    artifact = folder / "edge.onnx"
    artifact.write_bytes(content)
    fields = {
        "model_id": "risk",
        "version": version,
        "role": "edge-risk",
        "created_ts": 0.0,
        "input_spec": input_spec or {},
        "output_spec": {},
        "thresholds": thresholds or {},
        "metrics": metrics or {},
    }
    write_release(artifact, fields, load_private_key(registry.private_key))
    return artifact
