"""How the alerts did in the field (cloud/field_report.py): each alert's outcome from the failures
and maintenance reported after it, precision, failures warned ahead and their lead times; through
the API on both databases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import login
from test_cloud_auth import _users, api_context, serve

from cloud.api import create_app
from cloud.field_report import Alert, Reset, report
from cloud.intervals import wilson
from cloud.storage import Repo
from cloud.storage.models import AlertRow, EventRow, Tool

H = 3600.0
T0 = 1_800_000_000.0
# plasma_etch: rf_match_drift, chamber_deposition, esc_degradation progressive; rf_generator_trip sudden
ETCH = "plasma_etch"


OUTCOMES = {"failure": 1, "sudden": 1, "fault_found": 0, "no_fault": 0, "maintenance": 1, "none": 1}
OUTCOMES |= {"open": 1}


def _alerts() -> list[Alert]:
    return [
        Alert("a1", "E1", "rf_match_drift", T0),  # the tool fails by it 100 h later
        Alert("a2", "E1", "esc_degradation", T0 + 150 * H),  # the tool is maintained 30 h later
        Alert("a3", "E2", "chamber_deposition", T0),  # nothing follows in 240 h: a false alarm
        Alert("a4", "E2", "chamber_deposition", T0 + 290 * H),  # too recent to tell
        Alert("a5", "E3", "rf_match_drift", T0 + 10 * H),  # a sudden trip follows: not its doing
        # before the window, warns of E4's failure; its sensors pointed to the mode that failed
        Alert("old", "E4", "rf_match_drift", T0 - 50 * H, likely_mode="esc_degradation"),
    ]


def _resets() -> list[Reset]:
    return [
        Reset("E1", "failure", "rf_match_drift", T0 + 100 * H),
        Reset("E1", "failure", None, T0 + 102 * H),  # the same failure again, from a CMMS work order
        Reset("E1", "maintenance", None, T0 + 180 * H),
        Reset("E3", "failure", "rf_generator_trip", T0 + 20 * H),
        Reset("E3", "failure", "chamber_deposition", T0 + 200 * H),  # progressive, never warned
        Reset("E4", "failure", "esc_degradation", T0 + 10 * H),  # warned 60 h ahead, another mode named
    ]


def test_each_alert_gets_what_followed_it_and_each_failure_its_warning():
    types = {f"E{i}": ETCH for i in range(1, 6)}  # E5 reported, no alert, no event
    got = report(_alerts(), _resets(), types, since=T0, now=T0 + 300 * H)
    outcome = {k: v["outcome"] for k, v in got["alert_outcomes"].items()}
    assert outcome == {"a1": "failure", "a2": "maintenance", "a3": "none", "a4": "open", "a5": "sudden"}
    assert got["outcomes"] == OUTCOMES
    assert got["precision"] == 0.5  # a1 right, a3 wrong; the rest undecided
    # two decided alerts say little: Wilson's 90% interval around 1 of 2
    lo, hi = got["precision_interval"]
    assert [lo, hi] == list(wilson(1, 2)) and 0.0 < lo < 0.25 and 0.75 < hi < 1.0
    assert got["precision_if_maintained_right"] == pytest.approx(2 / 3)
    # Progressive failures in the window: E1 (warned 100 h ahead), E3's deposition (not), E4 (60 h).
    assert (got["failures"], got["failures_sudden"], got["warned"], got["warned_ge_lead"]) == (3, 1, 2, 1)
    assert got["warned_named_mode"] == 1  # E4's alert named another mode
    assert got["warned_pointed_mode"] == 1  # but its sensors pointed to the one that failed
    assert got["failures_merged"] == 1  # E1's failure reported twice counts once
    assert got["recall_ge_lead"] == pytest.approx(1 / 3)
    assert got["median_lead_h"] == pytest.approx(80.0)
    assert got["per_mode"]["chamber_deposition"] == {"failures": 1, "warned": 0, "warned_lead": 0}
    assert [
        (w["tool_id"], w["mode"], w["lead_h"], w["named"], w["pointed"]) for w in got["failure_warnings"]
    ] == [
        ("E4", "esc_degradation", pytest.approx(60.0), False, True),
        ("E1", "rf_match_drift", pytest.approx(100.0), True, False),
        ("E3", "chamber_deposition", None, False, False),
    ]
    assert got["false_alarms_per_tool_month"] == pytest.approx(1 / (5 * 300 / 720))
    assert "old" not in got["alert_outcomes"]  # before the window: it only warns


def test_what_an_inspection_found_decides_an_alert_no_failure_decided():
    types = {"E1": ETCH, "E2": ETCH}
    alerts = [
        Alert("f", "E1", "rf_match_drift", T0, finding="fault"),  # maintained, the fault was there
        Alert("n", "E2", "chamber_deposition", T0, finding="no_fault"),  # inspected: nothing, at once
        Alert("w", "E2", "chamber_deposition", T0 + 50 * H, finding="no_fault"),  # … but it failed
    ]
    resets = [
        Reset("E1", "maintenance", None, T0 + 20 * H),
        Reset("E2", "failure", "chamber_deposition", T0 + 60 * H),
    ]
    got = report(alerts, resets, types, since=T0, now=T0 + 70 * H)
    outcome = {k: v["outcome"] for k, v in got["alert_outcomes"].items()}
    assert outcome == {"f": "fault_found", "n": "failure", "w": "failure"}  # a failure overrules "no fault"
    got = report(alerts[:2], resets[:1], types, since=T0, now=T0 + 10 * H)  # before E2's failure
    assert {k: v["outcome"] for k, v in got["alert_outcomes"].items()} == {
        "f": "fault_found",
        "n": "no_fault",
    }
    assert got["precision"] == 0.5  # decided now, 230 h before match_h would have
    assert got["false_alarms_per_tool_month"] == pytest.approx(1 / (2 * 10 / 720))  # "no fault" counts


def test_a_tool_of_unknown_type_is_judged_by_the_type_its_failure_mode_belongs_to():
    """Before the cloud knows a tool's type, a failure by a mode that is sudden wherever it
    occurs is still counted apart, not as a progressive failure nobody warned of."""
    resets = [
        Reset("X1", "failure", "rf_generator_trip", T0 + H),  # plasma_etch's sudden mode
        Reset("X2", "failure", "rf_match_drift", T0 + H),  # progressive
        Reset("X3", "failure", None, T0 + H),  # no mode named: counted as progressive
    ]
    got = report([], resets, {"X1": None, "X2": None, "X3": None}, since=T0, now=T0 + 2 * H)
    assert (got["failures"], got["failures_sudden"]) == (2, 1)


def test_an_empty_fleet_says_so_without_dividing_by_zero():
    got = report([], [], {}, since=T0, now=T0 + H)
    assert got["alerts"] == 0 and got["precision"] is None and got["recall_ge_lead"] is None
    assert got["precision_interval"] is None and got["recall_ge_lead_interval"] is None
    assert got["median_lead_h"] is None and got["false_alarms_per_tool_month"] is None


def test_false_alarms_are_counted_over_the_time_each_tool_reported():
    """A tool added halfway through the window counts half; one that stopped reporting before it
    began, nothing; one whose edge sends no source times, the whole window (and the note says so)."""
    alerts = [Alert("a", "E1", "rf_match_drift", T0)]  # nothing follows in 240 h: a false alarm
    types = {f"E{i}": ETCH for i in range(1, 5)}
    spans: dict[str, tuple[float, float] | None] = {
        "E1": (T0 - 100 * H, T0 + 300 * H),  # the whole window
        "E2": (T0 + 150 * H, T0 + 300 * H),  # added halfway
        "E3": None,  # no source times: the whole window
    }  # E4 is not among them: it did not report in the window
    got = report(alerts, [], types, since=T0, now=T0 + 300 * H, spans=spans)
    assert got["tool_months"] == pytest.approx(2.5 * 300 / 720)
    assert got["false_alarms_per_tool_month"] == pytest.approx(1 / (2.5 * 300 / 720))
    assert "1 without source times" in got["tool_months_note"]
    whole = report(alerts, [], types, since=T0, now=T0 + 300 * H)  # no spans: every known tool, whole
    assert whole["tool_months"] == pytest.approx(4 * 300 / 720)


def _store(repo: Repo) -> None:
    """_alerts() and _resets() as the database holds them, E1–E5 reporting."""
    with repo.transaction() as s:
        for i in range(1, 6):  # E5 from an edge without source times; sent 400 days after
            first, last = (T0 - 100 * H, T0 + (295 if i == 4 else 290) * H) if i < 5 else (None, None)
            s.add(
                Tool(
                    tool_id=f"E{i}", edge_id="edge-1", site="fab1", tool_type=ETCH, last_ts=T0 + 400 * 86400,
                    first_source_ts=first, last_source_ts=last,
                )
            )  # fmt: skip
        # Reported before the window only (on the equipment's clock, though sent recently).
        s.add(
            Tool(
                tool_id="E6", edge_id="edge-1", site="fab1", tool_type=ETCH, last_ts=T0 + 400 * 86400,
                first_source_ts=T0 - 900 * H, last_source_ts=T0 - 100 * H,
            )
        )  # fmt: skip
        for a in _alerts():  # sent on the edge's clock, 400 days off the equipment's (a simulator)
            s.add(
                AlertRow(
                    msg_id=a.msg_id, edge_id="edge-1", site="fab1", tool_id=a.tool_id, mode=a.mode,
                    probability=0.9, model_version="r1", episode_start_ts=a.ts, ts=a.ts + 400 * 86400,
                    source_ts=a.ts, likely_mode=a.likely_mode,
                )
            )  # fmt: skip
        for i, r in enumerate(_resets()):
            s.add(
                EventRow(
                    msg_id=f"ev{i}", edge_id="edge-1", site="fab1", tool_id=r.tool_id, event=r.event,
                    mode=r.mode, source_ts=r.ts, detail={},
                )
            )  # fmt: skip
        s.add(EventRow(msg_id="st", edge_id="edge-1", site="fab1", tool_id="E2", event="state", source_ts=T0))


def test_the_api_reads_them_from_the_database(repo: Repo, tmp_path: Path):
    _store(repo)
    users = _users(repo)
    users.add("vic", "vic-password", "viewer")
    users.add("olga", "olga-password", "operator")
    # The wall clock is months off the equipment's (a simulator's own): "now" is the newest record.
    ctx = api_context(repo, tmp_path, users, clock=lambda: T0 + 300 * 86400)
    with serve(create_app(ctx)) as client:
        vic, olga = login(client, "vic"), login(client, "olga")
        r = client.get("/api/alerts/field", params={"days": 300 / 24}, headers=vic)
        assert client.get("/api/alerts/field", params={"days": 0}, headers=vic).status_code == 422
        finding = {"finding": "no_fault", "note": "RF match checked, within spec"}
        assert client.post("/api/alerts/a4/ack", json=finding, headers=vic).status_code == 403
        assert client.post("/api/alerts/a4/ack", json={"finding": "maybe"}, headers=olga).status_code == 422
        acked = client.post("/api/alerts/a4/ack", json=finding, headers=olga).json()
        assert (acked["acknowledged_by"], acked["ack_finding"], acked["ack_note"]) == (
            "olga",
            "no_fault",
            finding["note"],
        )
        assert (
            client.post("/api/alerts/a3/ack", headers=olga).json()["ack_finding"] is None
        )  # no body: just seen
        after = client.get("/api/alerts/field", params={"days": 300 / 24}, headers=vic).json()
    assert r.status_code == 200, r.text
    assert after["alert_outcomes"]["a4"]["outcome"] == "no_fault"  # decided by the inspection, not by waiting
    assert after["precision"] == pytest.approx(1 / 3)  # a1 right; a3 (nothing in 240 h) and a4 wrong
    got = r.json()
    assert got["until_ts"] == T0 + 295 * H  # E4's latest telemetry, on the equipment's clock
    assert got["alert_outcomes"]["a1"]["at_ts"] == T0
    assert got["outcomes"] == OUTCOMES
    assert (got["failures"], got["warned"], got["warned_ge_lead"]) == (3, 2, 1)
    assert (got["warned_named_mode"], got["warned_pointed_mode"]) == (1, 1)  # read back from the database
    # E4 and E5 (no source times) over the whole 300 h window, E1–E3 to their last telemetry, E6 not.
    assert got["tool_months"] == pytest.approx((2 * 300 + 3 * 295) / 720)


def test_fabpm_cloud_report_prints_them_without_migrating(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``fabpm cloud report``: the figures in words, per mode and per failure; ``--json`` the API's
    answer. A SQLite file that is not there is an error, not a new empty database."""
    from cloud.cli import main
    from cloud.errors import CloudError
    from cloud.storage import make_engine, migrate

    db = tmp_path / "cloud.db"
    config = tmp_path / "cloud.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{db}"\n')
    with pytest.raises(CloudError, match="no database at"):
        main(["report", "--config", str(config)])
    assert not db.exists()
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    _store(Repo(engine))
    engine.dispose()
    assert main(["report", "--config", str(config), "--days", str(300 / 24)]) == 0
    text = capsys.readouterr().out
    assert "5 alerts: 1 a failure, 1 a sudden one" in text and "precision 50% (90%: " in text
    months = (2 * 300 + 3 * 295) / 720  # as the API test above says
    assert f"per tool-month {1 / months:.2f} (over {months:.1f} tool-months)" in text
    assert "progressive failures warned 2 of 3, 1 at least 72 h ahead" in text
    assert "named by an alert before it for 1 of the 2 warned, pointed to by an alert's sensors for 1" in text
    assert "E3 chamber_deposition: not warned" in text and "E1 rf_match_drift: warned 100 h ahead" in text
    assert "availability: no state changes reported in the window" in text  # its events carry no state
    day = next(line for line in text.splitlines() if "the last 24 h:" in line)  # cloud/digest.py
    assert day.strip().startswith("the last 24 h: ") and "maintenance reported" in day, day
    assert main(["report", "--config", str(config), "--days", str(300 / 24), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcomes"] == OUTCOMES
    with pytest.raises(CloudError, match="--days"):
        main(["report", "--config", str(config), "--days", "0"])


def test_the_worker_publishes_the_figures_as_gauges(db_url: str, tmp_path: Path):
    from conftest import cloud_config, free_port

    from cloud.service import CloudService
    from cloud.storage import migrate

    now = T0 + 300 * H
    svc = CloudService(cloud_config(db_url, free_port(), tmp_path), clock=lambda: now)
    try:
        migrate(svc.engine)  # start() would; this test calls the hourly job alone
        svc._field_gauges()  # an empty database: nothing decided yet
        assert math.isnan(_gauge(svc, "precision")) and _gauge(svc, "alerts") == 0
        with svc.repo.transaction() as s:
            s.add(Tool(tool_id="E1", edge_id="edge-1", site="fab1", tool_type=ETCH, last_ts=now))
            for i, ts in enumerate((T0, T0 + 200 * H)):
                s.add(
                    AlertRow(
                        msg_id=f"a{i}", edge_id="edge-1", site="fab1", tool_id="E1", mode="rf_match_drift",
                        probability=0.9, model_version="r1", episode_start_ts=ts, ts=ts,
                    )
                )  # fmt: skip
            s.add(
                EventRow(
                    msg_id="f", edge_id="edge-1", site="fab1", tool_id="E1", event="failure",
                    mode="rf_match_drift", source_ts=T0 + 100 * H, detail={},
                )
            )  # fmt: skip
        svc._field_gauges()
        assert (_gauge(svc, "alerts"), _gauge(svc, "failures"), _gauge(svc, "precision")) == (2, 1, 1.0)
        assert (_gauge(svc, "warned_ge_72h"), _gauge(svc, "median_lead_h")) == (1.0, 100.0)
    finally:
        svc.stop()


def _gauge(svc: object, figure: str) -> float:
    return svc.metrics.registry.get_sample_value("fabpm_cloud_field", {"figure": figure})  # type: ignore[attr-defined]
