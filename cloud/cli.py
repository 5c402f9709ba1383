"""``fabpm cloud ...``: run a worker, make signing keys, migrate the database, manage users.

::

    fabpm cloud run --config cloud.toml
    fabpm cloud keys --out DIR                    Ed25519 signing.key (private) + signing.pub
    fabpm cloud migrate --config cloud.toml       bring the database schema up to date
    fabpm cloud user add --config cloud.toml --username NAME --role viewer|operator|admin
                                                  (password from FABPM_CLOUD_PASSWORD or stdin)
    fabpm cloud user remove --config cloud.toml --username NAME     (and every token of theirs)
    fabpm cloud backup --config cloud.toml --out DIR [--with-signing-key]
                                                  database (SQLite; PostgreSQL: pg_dump), models,
                                                  improved full models, keys; see cloud/backup.py
    fabpm cloud restore --config cloud.toml --from DIR [--force]   (the cloud stopped)
    fabpm cloud report --config cloud.toml [--days 30] [--json]
                                                  how the alerts did: what followed each, failures
                                                  warned and how far ahead (the Alerts tab's figures)
    fabpm cloud model register --config cloud.toml --artifact M.onnx [--checkpoint FULL.pt]
        [--edge-checkpoint EDGE.pt] [--active]
                                                  record a signed release made outside a learning
                                                  round (e.g. the first model every edge starts with)
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cloud import config as cloud_config
from cloud.errors import AuthError, CloudError, RegistryError
from shared.signing import generate_keypair

if TYPE_CHECKING:
    from cloud.storage import Repo


def _cfg(ns: argparse.Namespace) -> cloud_config.CloudConfig:
    return cloud_config.load(Path(ns.config) if ns.config else None)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fabpm cloud", description="The fabpm cloud service.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run a cloud worker (ingest, verdicts, learning, API, console)")
    p_run.add_argument("--config", help="cloud.toml (defaults and FABPM_CLOUD__* overrides otherwise)")
    p_keys = sub.add_parser("keys", help="make an Ed25519 key pair for signing models")
    p_keys.add_argument("--out", required=True, help="folder for signing.key and signing.pub")
    p_keys.add_argument("--force", action="store_true", help="overwrite existing keys")
    p_mig = sub.add_parser("migrate", help="bring the database schema up to date")
    p_mig.add_argument("--config")
    p_user = sub.add_parser("user", help="manage console/API users")
    user_sub = p_user.add_subparsers(dest="user_cmd", required=True)
    p_add = user_sub.add_parser("add", help="create a user or change its password and role")
    p_add.add_argument("--config")
    p_add.add_argument("--username", required=True)
    p_add.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    p_rm = user_sub.add_parser("remove", help="remove a user and every token of theirs")
    p_rm.add_argument("--config")
    p_rm.add_argument("--username", required=True)
    p_bak = sub.add_parser(
        "backup", help="back up the database, models, checkpoints and keys (cloud/backup.py)"
    )
    p_bak.add_argument("--config")
    p_bak.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    p_bak.add_argument(
        "--with-signing-key", action="store_true", help="copy the private signing key too (a secret)"
    )
    p_res = sub.add_parser("restore", help="restore a backup where the config puts things (cloud stopped)")
    p_res.add_argument("--config")
    p_res.add_argument("--from", dest="source", type=Path, required=True, help="the backup folder")
    p_res.add_argument("--force", action="store_true", help="replace a database, models or key already there")
    p_rep = sub.add_parser(
        "report", help="how the alerts did: what followed each, failures warned (the Alerts tab's figures)"
    )
    p_rep.add_argument("--config")
    p_rep.add_argument("--days", type=float, default=30.0, help="the window, ending at the newest record")
    p_rep.add_argument("--json", action="store_true", help="the whole report as JSON (GET /api/alerts/field)")
    p_model = sub.add_parser("model", help="the model registry")
    model_sub = p_model.add_subparsers(dest="model_cmd", required=True)
    p_reg = model_sub.add_parser("register", help="verify and record a signed release")
    p_reg.add_argument("--config")
    p_reg.add_argument("--artifact", type=Path, required=True, help="the ONNX file, manifest beside it")
    p_reg.add_argument("--checkpoint", type=Path, help="the full model it was distilled from")
    p_reg.add_argument(
        "--edge-checkpoint", type=Path, help="the edge checkpoint it was exported from (rounds start there)"
    )
    p_reg.add_argument("--active", action="store_true", help="mark it the model the edges run now")
    ns = parser.parse_args(argv)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step is noise here

    if ns.cmd == "keys":
        out = Path(ns.out)
        private, public = out / "signing.key", out / "signing.pub"
        if private.exists() and not ns.force:
            raise CloudError(f"{private} exists; pass --force to replace it (edges trust the old public key)")
        generate_keypair(private, public)
        print(f"wrote {private} (keep secret) and {public} (give to every edge)")
        return 0
    if ns.cmd == "run":
        from cloud.service import run

        return run(_cfg(ns))

    if ns.cmd in ("backup", "restore"):
        return _backup_or_restore(_cfg(ns), ns)

    from cloud.storage import Repo, make_engine, migrate

    cfg = _cfg(ns)
    if ns.cmd == "report":
        _require_database(cfg.storage.url)
    engine = make_engine(cfg.storage.url)
    try:
        if ns.cmd == "report":  # reads only: never migrates a schema that running workers use
            return _report(Repo(engine), ns.days, ns.json, cfg.storage.state_events_days)
        revision = migrate(engine)
        if ns.cmd == "migrate":
            print(f"database at revision {revision}")
            return 0
        if ns.cmd == "model":
            return _register(cfg, Repo(engine), ns)
        from cloud.auth import Users

        repo = Repo(engine)
        users = Users(repo, cfg.api.auth.token_ttl_s, cfg.api.auth.scrypt_n)
        if ns.user_cmd == "remove":
            try:
                users.remove(ns.username)
            except AuthError as exc:
                raise CloudError(str(exc)) from exc
            _audit(repo, "remove", ns.username)
            print(f"user {ns.username} removed, with every token of theirs")
            return 0
        password = os.environ.get("FABPM_CLOUD_PASSWORD")
        if password is None:
            password = (
                getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
            )
        try:
            users.add(ns.username, password, ns.role)
        except AuthError as exc:
            raise CloudError(str(exc)) from exc
        _audit(repo, "add", f"{ns.username} ({ns.role})")
        print(f"user {ns.username} ({ns.role}) saved")
        return 0
    finally:
        engine.dispose()


def _require_database(url: str) -> None:
    """A SQLite file that is not there is an error (opening it would create an empty one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(str(file)).is_file():
        raise CloudError(f"storage.url: no database at {file} (run from the cloud's folder?)")


def _report(repo: Repo, days: float, as_json: bool, state_days: float) -> int:
    """The field report over the last ``days`` (cloud/field_report.py) and, in words, the fleet's
    SEMI E10 availability (cloud/e10_report.py): for a shift review or a scheduled e-mail, without
    the console."""
    import time

    from cloud.digest import digest
    from cloud.e10_report import describe_fleet, e10_report
    from cloud.field_report import LEAD_H, MATCH_H, describe, field_report

    if days <= 0:
        raise CloudError(f"--days: {days}, must be > 0")
    r = field_report(repo, time.time(), days, LEAD_H, MATCH_H)
    if as_json:
        print(json.dumps(r, indent=1))
        return 0
    since, until = (
        datetime.fromtimestamp(r[k], UTC).strftime("%Y-%m-%d %H:%M") for k in ("since_ts", "until_ts")
    )
    print(f"alerts and failures {since} – {until} UTC (the equipment's clock)")
    for line in describe(r):
        print(f"  {line}")
    if r["per_mode"]:
        print(f"  {'mode':28s} {'failures':>8s} {'warned':>7s} {f'≥ {LEAD_H:.0f} h':>7s}")
        for mode, row in r["per_mode"].items():
            print(f"  {mode:28s} {row['failures']:8d} {row['warned']:7d} {row['warned_lead']:7d}")
    for w in r["failure_warnings"]:
        at = datetime.fromtimestamp(w["at_ts"], UTC).strftime("%Y-%m-%d %H:%M")
        lead = "not warned" if w["lead_h"] is None else f"warned {w['lead_h']:.0f} h ahead"
        print(f"  {at} {w['tool_id']} {w['mode'] or '(no mode)'}: {lead}")
    if days <= state_days:  # state changes are kept that long
        print(f"  availability: {describe_fleet(e10_report(repo, time.time(), days, state_days))}")
    else:
        print(f"  availability: not over {days:g} days (state changes are kept {state_days:g} days)")
    with repo.transaction() as s:  # what a shift hands over: the last day (cloud/digest.py)
        print(f"  {digest(s, time.time())['text'].removeprefix('fabpm, ')}")
    return 0


def _backup_or_restore(cfg: cloud_config.CloudConfig, ns: argparse.Namespace) -> int:
    from cloud import backup

    if ns.cmd == "backup":
        doc = backup.backup(cfg, ns.out, ns.with_signing_key)
        rows = ", ".join(f"{n} {k}" for k, n in doc["tables"].items() if n)
        print(f"backup in {ns.out}: {len(doc['files'])} files, schema {doc['revision']}; rows: {rows}")
        if "pg_dump" in doc:
            print(f"the PostgreSQL database is not in it: back it up with  {doc['pg_dump']}")
        for path in doc.get("missing", []):
            print(f"warning: the database names {path}, which does not exist (not in the backup)")
        if not ns.with_signing_key:
            print("the private signing key is not in it (--with-signing-key): keep it safe apart")
        return 0
    got = backup.restore(cfg, ns.source, ns.force)
    rows = ", ".join(f"{n} {k}" for k, n in got["tables"].items() if n)
    n_files, n_paths = got["files"], got["paths_rewritten"]
    print(f"restored {n_files} files, {n_paths} model paths rewritten, schema {got['revision']}")
    print(f"rows: {rows}")
    return 0


def _audit(repo: Repo, cmd: str, target: str) -> None:
    """The CLI's user changes in the audit trail, by the OS user who ran them (cloud/audit.py)."""
    from cloud.audit import entry, record

    try:
        who = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # a container's uid without a passwd entry
        who = f"cli:uid {os.getuid()}"
    record(repo, entry(who, "", who, f"fabpm cloud user {cmd}", target, 0))


def _register(cfg: cloud_config.CloudConfig, repo: Repo, ns: argparse.Namespace) -> int:
    from cloud.registry import Registry

    registry = Registry(repo, cfg.registry)
    try:
        row = registry.register(ns.artifact, ns.checkpoint, edge_checkpoint=ns.edge_checkpoint)
        if ns.active:
            registry.activate(row.version)
    except RegistryError as exc:
        raise CloudError(str(exc)) from exc
    print(f"model {row.role} {row.version} registered{' as active' if ns.active else ''}")
    return 0
