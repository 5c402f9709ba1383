"""The operator console in headless Chromium (Playwright): sign in, label a case, approve a tuning
proposal; a viewer sees no action buttons. Skips when Debian's chromium is absent."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from conftest import free_port

from cloud.config import CloudConfig
from cloud.notify import payload_of
from cloud.service import CloudService
from cloud.storage.models import AlertRow, NotificationRow, Tool
from cloud.testing import hardcase, signed_release
from shared.equipment import tool_type
from shared.features import FeatureSpec, Scaler, feature_names
from shared.messages import Alert, Event, Status, Telemetry, Tuning
from shared.topics import Kind, topic

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ZONE = "Asia/Kolkata"  # UTC+05:30 all year (no daylight saving)
LOCAL = ZoneInfo(ZONE)


def _local(ts: float) -> str:
    """What the console shows for ``ts`` in :data:`ZONE`."""
    return datetime.fromtimestamp(ts, LOCAL).strftime("%Y-%m-%d %H:%M:%S")


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]


@pytest.fixture
def service(mosquitto, tmp_path: Path) -> Iterator[CloudService]:
    cfg = CloudConfig.model_validate(
        {
            "storage": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
            "mqtt": {"port": mosquitto.port, "client_id": "cloud-console-test"},
            "api": {"port": free_port(), "auth": {"scrypt_n": 2**10}},
            "learning": {"enabled": False},
            "registry": {  # never the defaults, relative to the working directory (the checkout)
                "dir": str(tmp_path / "models"),
                "private_key": str(tmp_path / "keys" / "signing.key"),
                "public_key": str(tmp_path / "keys" / "signing.pub"),
            },
        }
    )
    svc = CloudService(cfg)
    svc.start()
    svc.users.add("olga", "olga-password", "operator")
    svc.users.add("vic", "vic-password", "viewer")
    svc.users.add("ada", "ada-password", "admin")
    yield svc
    svc.stop()


CSV_OF_A_HOSTILE_TABLE = """() => {
    const t = document.createElement("table");
    t.innerHTML = '<thead><tr><th>a</th><th>b</th><th></th></tr></thead><tbody>' +
      '<tr><td>=HYPERLINK("x")</td><td>-1.5</td><td>dropped</td></tr>' +
      '<tr><td>say "hi", then go<button>Approve</button></td><td></td><td></td></tr></tbody>';
    return tableCsv(t);
}"""


def _sign_in(page, base: str, user: str) -> None:
    page.goto(f"{base}/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", f"{user}-password")
    page.click("button[type=submit]")
    page.wait_for_selector("#tabs:not([hidden])")


def _until(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _register_edge_model(
    service: CloudService, version: str, folder: Path, metrics: dict[str, float] | None = None
) -> None:
    """A signed release whose manifest carries a feature spec (the scaler: the type's mean, std)
    and an alert rule (with ``metrics``: the figures of its choice)."""
    sensors = tool_type("plasma_etch").sensors
    scaler = Scaler(mean={"plasma_etch": tuple(s.nominal for s in sensors)}, std={"plasma_etch": (1.0,) * 14})
    spec = FeatureSpec(window=24, step_s=60.0, scaler=scaler).to_dict()
    rule = {"alert_probability": 0.03, "alert_persistence_steps": 2, "alert_clear_probability": 0.015}
    release = signed_release(service.cfg.registry, folder, version, spec, thresholds=rule, metrics=metrics)
    service.registry.register(release)


def test_console_labels_and_approves(service: CloudService, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    case = hardcase(case_id="case-1", steps=24, n_features=len(feature_names()))  # the edge model's layout
    _register_edge_model(service, case.model_version, tmp_path)  # its scaler turns z back into units
    (tmp_path / "e2").mkdir()
    chosen = {  # as cloud.training.alert_choice.release_rule writes them
        "alert_rule_warnable_failures": 29.0,
        "alert_rule_recall_ge_lead": 10 / 29,
        "alert_rule_alerts": 25.0,
        "alert_rule_precision": 0.96,
        "alert_rule_tools": 6.0,
        "alert_rule_recall_ge_lead_lo": 0.2,
        "alert_rule_recall_ge_lead_hi": 0.5,
        "alert_rule_precision_lo": 0.88,
        "alert_rule_precision_hi": 1.0,
    }
    _register_edge_model(service, "e2", tmp_path / "e2", chosen)
    assert service.ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), case.to_bytes())
    prop = Tuning(
        edge_id="edge-1",
        site="fab1",
        tool_id="etch-01",
        action="proposal",
        proposal_id="p-9",
        setpoints={"rf_power": 505.0},
        previous={"rf_power": 500.0},
        expected={"yield_delta": 0.4, "energy_delta": -0.25, "surrogate_yield_delta": 0.1},
    )
    assert service.ingest.handle(topic("fab1", "edge-1", Kind.TUNING), prop.to_bytes())
    for action, reason in (("proposal", ""), ("expired", "no decision within 600 s")):
        # an edge's proposal that nobody decided on in time (each message its own msg_id)
        msg = Tuning(
            edge_id="edge-1",
            site="fab1",
            tool_id="etch-02",
            action=action,
            proposal_id="p-8",
            setpoints={"rf_power": 495.0},
            reason=reason,
        )
        assert service.ingest.handle(topic("fab1", "edge-1", Kind.TUNING), msg.to_bytes())
    now = time.time()
    for i in range(30):  # half an hour of etch-01's risk, two modes, and an alert at its peak
        risk = {"wear": 0.1 + i / 40, "arcing": 0.05}
        # The edge's sensor health with each: the throttle valve has sat still for 3 h of processing.
        still = {"mean": 40.0, "min": 40.0, "max": 40.0, "last": 40.0, "unchanged_s": 10800.0, "bad_s": 0.0}
        summary = {"throttle_valve": still, "dc_bias": still | {"unchanged_s": 0.0}}
        tel = Telemetry(
            edge_id="edge-1", site="fab1", tool_id="etch-01", period_s=60, summary=summary, risk=risk
        )
        tel = tel.model_copy(update={"ts": now - 1800 + 60 * i})
        assert service.ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), tel.to_bytes())
    # etch-02's edge last reported an hour ago, its ESC temperature Bad then: the stretch stays open
    bad = {"last": None, "unchanged_s": 0.0, "bad_s": 3600.0}
    quiet = Telemetry(
        edge_id="edge-1",
        site="fab1",
        tool_id="etch-02",
        period_s=60,
        summary={"esc_temp": bad},
        ts=now - 3600.0,
        source_ts=now - 3600.0,
    )
    assert service.ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), quiet.to_bytes())
    # etch-02's states (SEMI E10): productive, a 4 h PM a day ago, standby since
    for hours_ago, kind, state in ((48, "state", "productive"), (24, "maintenance", "scheduled_down"),
                                   (20, "state", "standby")):  # fmt: skip
        ev = Event(edge_id="edge-1", site="fab1", tool_id="etch-02", event=kind, state=state,
                   source_ts=now - hours_ago * 3600)  # fmt: skip
        assert service.ingest.handle(topic("fab1", "edge-1", Kind.EVENT), ev.to_bytes())
    alert = Alert(
        edge_id="edge-1", site="fab1", tool_id="etch-01", mode="wear", probability=0.8,
        model_version="e1", episode_start_ts=now - 600,
        source_ts=now - 900,  # the window that raised it, sent 5 min later
        evidence=[{"sensor": "throttle_valve", "contribution": 0.35, "deviation": 3.14},
                  {"sensor": "wall_temp", "contribution": 0.04, "deviation": -0.52}],
        reference_known=True, likely_mode="chamber_deposition",
    ).model_copy(update={"ts": now - 600})  # before the failure recorded below  # fmt: skip
    assert service.ingest.handle(topic("fab1", "edge-1", Kind.ALERT), alert.to_bytes())
    up = Status(edge_id="edge-1", site="fab1", state="online", models={"edge-risk": case.model_version})
    assert service.ingest.handle(topic("fab1", "edge-1", Kind.STATUS), up.to_bytes())
    service.rollout.start("e2", ["edge-1"])  # at its canary: no hard case from it yet
    with service.repo.transaction() as s:  # the notifier's row for it (cloud/notify.py), failing
        s.add(
            NotificationRow(
                target="teams", subject=f"alert:{alert.msg_id}",
                payload=payload_of(s.get(AlertRow, alert.msg_id)), status="pending", attempts=2,
                next_ts=now, last_error="HTTP 503", created_ts=now,
            )
        )  # fmt: skip
    base = f"http://127.0.0.1:{service.cfg.api.port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # Times show in the browser's zone (a fab's local time); one with a half-hour offset
            # tells a local time from UTC and from a whole-hour mistake.
            page = browser.new_page(timezone_id=ZONE)
            page.goto(f"{base}/")
            zone = page.locator("#tz").inner_text()  # ICU may name it Asia/Calcutta
            assert zone.startswith("times in Asia/") and zone.endswith(" (UTC+05:30)"), zone
            page.fill("input[name=username]", "olga")
            page.fill("input[name=password]", "wrong-password")
            page.click("button[type=submit]")
            page.wait_for_selector("#login-error:has-text('wrong')")

            _sign_in(page, base, "olga")
            page.wait_for_selector("#fleet td:has-text('edge-1')")
            page.wait_for_selector("#workers td:has-text('cloud-console-test')")
            # Availability: etch-02 known from its first state to its last report (47 h), 4 h in a PM
            e10 = page.locator("#e10 tr:has-text('etch-02') td").all_inner_texts()
            assert e10[3:] == ["91.5%", "0.0", "4.0", "0", "", "", "47"], e10
            assert page.locator("#e10 tr:has-text('etch-02') svg rect.scheduled_down").count() == 1
            said = page.locator("#e10-summary").inner_text()
            assert "equipment uptime 91.5%, 0 failures, 0.0 h unscheduled down, MTBF (no failure)" in said
            # The last day in a line (cloud/digest.py): the alert, the PM a day ago, the sensors.
            day = page.locator("#digest").inner_text()
            assert day.startswith("The last 24 h: 1 alert (etch-01 1), 1 not acknowledged; ") and (
                "0 failures and 1 maintenance reported; 2 sensors looking stuck or Bad now" in day
            ), day
            # A click on a header sorts by that column, highest first (the risk by its highest
            # probability; etch-02 has none), a second click the other way; a refresh keeps it.
            tools = page.locator("#tools tbody tr td:first-child")
            assert tools.all_inner_texts() == ["etch-01", "etch-02"]
            page.click("#tools th:has-text('Tool')")
            assert tools.all_inner_texts() == ["etch-02", "etch-01"]
            page.click("#tools th:has-text('Risk')")
            assert tools.all_inner_texts() == ["etch-01", "etch-02"]
            page.click("#tools th:has-text('Tool')")
            page.click("#tools th:has-text('Tool')")  # the other way: a-z
            page.click("#tools th:has-text('Tool')")
            page.wait_for_timeout(5500)  # the console refreshes every 5 s
            assert tools.all_inner_texts() == ["etch-02", "etch-01"]
            assert page.locator("#tools th:has-text('Tool')").get_attribute("data-sorted") == "desc"
            # The filter box: only the rows with every word typed, kept across a refresh.
            page.fill("input.filter[data-table=tools]", "ETCH-02 fab")
            assert page.locator("#tools tbody tr:visible td:first-child").all_inner_texts() == []  # no "fab"
            page.fill("input.filter[data-table=tools]", "ETCH-02")
            page.wait_for_timeout(5500)
            assert page.locator("#tools tbody tr:visible td:first-child").all_inner_texts() == ["etch-02"]
            page.fill("input.filter[data-table=tools]", "")
            assert tools.all_inner_texts() == ["etch-02", "etch-01"]
            issue = page.locator("#tools tr:has-text('etch-01') td.sensor-issue").inner_text()
            assert issue == "throttle_valve unchanged while processing 3.0 h"  # dc_bias is fine
            stretch = page.locator("#sensor-issues tbody tr").all_inner_texts()
            assert len(stretch) == 2 and "throttle_valve\tunchanged while processing" in stretch[0]
            assert stretch[0].endswith("3.0 h\tstill open")
            assert "esc_temp\tno good value" in stretch[1] and "open at the tool's last data (" in stretch[1]
            page.click("#tools tr:has-text('etch-01') button:has-text('Risk')")
            page.wait_for_selector("#tool-detail .legend span:has-text('wear')")
            assert page.locator("#tool-detail svg polyline").count() == 2  # one line per mode
            assert page.locator("#tool-detail svg .alert-mark").count() == 1
            assert page.locator("#tool-detail svg .event-mark").count() == 0
            hover = page.locator("#tool-detail svg .alert-mark title").text_content()
            assert hover.endswith(": wear 0.80; moving: throttle_valve +3.1 sd, wall_temp −0.5 sd"), hover
            # A failure the equipment did not report, recorded from the tool's panel, labels its cases;
            # its time starts at the tool's newest report, on the tool's clock as the history.
            with service.repo.transaction() as s:
                newest = s.get(Tool, "etch-01").last_source_ts
            at = datetime.fromisoformat(page.locator("#event-form input[name=at]").input_value())
            assert at == datetime.fromtimestamp(int(newest), LOCAL).replace(tzinfo=None), (at, newest)
            # (here the hard case's made-up window time, 1970: the operator sets when it failed)
            failed_at = datetime.fromtimestamp(now, LOCAL).strftime("%Y-%m-%dT%H:%M:%S")
            page.fill("#event-form input[name=at]", failed_at)
            assert page.locator("#event-form select[name=mode] option").count() == len(
                tool_type("plasma_etch").mode_names
            )
            page.select_option("#event-form select[name=mode]", "rf_match_drift")
            page.fill("#event-form input[name=note]", "WO-4711")
            page.click("#event-form button[type=submit]")
            page.wait_for_selector("#status:has-text('failure of etch-01 recorded: 1 case labelled')")
            assert service.repo.get_case("case-1").label_source == "failure"
            # ... drawn on the risk chart as a red line, on the equipment's clock as the history
            page.locator("#tool-detail svg .event-mark.failure").wait_for(state="attached")  # 0 px wide
            assert "failure" in page.locator("#tool-detail svg .event-mark title").text_content()
            # ... and heads the tool's history, above the alert before it (the equipment's clock).
            page.wait_for_selector("#history td:has-text('reported by olga: WO-4711')")
            history = [r.split("\t") for r in page.locator("#history tbody tr").all_inner_texts()]
            assert [r[1:4] for r in history] == [["failure", "rf_match_drift", ""], ["alert", "wear", ""]]
            assert history[0][5] == "operator" and history[1][4].startswith("p 0.80; not acknowledged")
            last = page.locator("#history-last").inner_text()
            assert "last maintenance none reported, last failure 20" in last, last
            assert page.locator("#history-older").is_hidden()
            # Shelved from the same panel (its notifications held back, with a reason), then unshelved.
            page.select_option("#shelve-form select[name=hours]", "8")
            page.fill("#shelve-form input[name=reason]", "PM until Friday")
            page.click("#shelve-form button[type=submit]")
            page.wait_for_selector("#tool-detail .shelf-now:has-text('by olga: PM until Friday')")
            shelf = page.locator("#tools tr:has-text('etch-01') td.shelved").inner_text()
            assert shelf.startswith("until ") and shelf.endswith(" by olga: PM until Friday"), shelf
            assert page.locator("#tools tr:has-text('etch-02') td.shelved").inner_text() == ""
            page.click("#shelve-form button[name=unshelve]")
            page.wait_for_selector("#status:has-text('etch-01 unshelved')")
            assert page.locator("#tool-detail .shelf-now").inner_text() == ""
            assert page.locator("#shelve-form button[name=unshelve]").is_hidden()
            # A PM on tomorrow's calendar, in the browser's time: planned, then cancelled.
            tomorrow = datetime.fromtimestamp(time.time() + 86400, LOCAL).strftime("%Y-%m-%dT06:00")
            page.fill("#shelve-form input[name=from]", tomorrow)
            page.fill("#shelve-form input[name=reason]", "PM tomorrow")
            page.click("#shelve-form button[type=submit]")
            plan = page.locator("#tool-detail .shelf-planned li")
            plan.first.wait_for()
            assert plan.inner_text().startswith(f"Planned: from {tomorrow.replace('T', ' ')}:00 until ")
            assert "by olga: PM tomorrow" in plan.inner_text()
            assert page.locator("#tool-detail .shelf-now").inner_text() == "", "not in force yet"
            plan.locator("button:has-text('Cancel')").click()
            page.wait_for_selector("#status:has-text('planned shelf of etch-01 cancelled')")
            assert plan.count() == 0
            page.click("#tabs button[data-tab=alerts]")
            page.wait_for_selector("#alerts td.outcome-failure:has-text('failed (rf_match_drift)')")
            # The throttle valve had sat still for 3 h when the alert came: said beside its mode.
            said = page.locator("#alerts tr:has-text('etch-01') .sensor-issue").inner_text()
            assert said == "check first: throttle_valve unchanged while processing 3.0 h"
            pointed = page.locator("#alerts tr:has-text('etch-01') .likely-mode").inner_text()
            assert pointed == "sensors point to chamber_deposition"
            # What the edge found carries the risk, one sensor a line; its share in the tooltip.
            moving = page.locator("#alerts tr:has-text('etch-01') td").nth(3)
            assert moving.inner_text() == "throttle_valve +3.1 sd\nwall_temp −0.5 sd"
            assert moving.get_attribute("title").startswith(
                "throttle_valve: put back to its reference, the risk falls by 0.35\n"
            )
            # An alert of a tool the edge has not yet seen come back up: what its cell says, with
            # the sensors that moved since the edge began watching it, and with none.
            said = page.evaluate(
                "() => [[{sensor: 'esc_temp', contribution: 0.2, deviation: -1.26}], []]"
                ".map((e) => { const td = moving(e, false); return [td.innerText, td.title]; })"
            )
            assert said[0][0] == "esc_temp −1.3 sd\nsince the edge began watching", said
            assert said[0][1].startswith("esc_temp: put back to the first readings the edge saw of it"), said
            assert said[1][0] == "none named: no reference yet", said
            assert said[1][1].startswith("the edge has not seen this tool come back up"), said
            summary = page.locator("#field-summary").inner_text()
            assert "1 alert; 1 followed by a failure" in summary
            assert "Precision 100% (90%: 27\u2013100%)" in summary, "one alert says little"
            assert "0.00 false alarms per tool-month" in summary
            # It named "wear" and its sensors chamber_deposition; the tool failed by rf_match_drift.
            said = "named by an alert before it for 0 of the 1 warned, pointed to by an alert's sensors for 0"
            assert said in summary
            # the failure on the lead-time chart: warned, but less than 72 h ahead
            assert page.locator("#field-chart rect.lead-short").count() == 1
            assert page.locator("#field-chart rect.lead-ok, #field-chart .unwarned").count() == 0
            page.select_option("#field-days", "7")  # the window the alerts are judged over
            page.wait_for_selector("#field-summary:has-text('Last 7 days: 1 alert')")
            page.click("#alerts tr:has-text('etch-01') button:has-text('No fault found')")  # an inspection
            page.wait_for_selector("#alerts td:has-text('olga: no fault found')")
            row = page.locator("#alerts table[data-csv=alerts] tr:has-text('etch-01')")
            assert "failed (rf_match_drift)" in row.inner_text()  # the failure overrules the inspection
            raised = row.locator("td").first  # the equipment's time; the send time in the tooltip
            assert raised.inner_text() == _local(now - 900)
            assert raised.get_attribute("title") == f"sent by the edge {_local(now - 600)}"
            page.wait_for_selector(
                "#notifications tr:has-text('teams'):has-text('HTTP 503'):has-text('etch-01')"
            )
            page.click("#tabs button[data-tab=cases]")
            page.select_option("#case-filter", "all")  # labelled now: by the failure recorded above
            page.wait_for_selector("#cases td:has-text('by failure')")
            case = service.repo.get_case("case-1")
            when = page.locator("#cases tr:has-text('etch-01') td").first  # the window's end, not receipt
            assert when.inner_text() == _local(case.window_ts)
            assert when.get_attribute("title").startswith("received ")
            page.click("#cases tr:has-text('etch-01') button:has-text('Healthy')")
            _until(lambda: service.repo.get_case("case-1").label_source == "operator")
            assert service.repo.get_case("case-1").label_failed is False
            page.click("#tabs button[data-tab=models]")
            watch = page.locator("#rollouts tr:has-text('e2')")
            watch.locator("td:has-text('no hard cases from it yet')").wait_for()
            # each release's alert rule, and how sure the figures of its choice are
            rule = page.locator("#models tbody tr:has(td:text-is('e2')) td.lines")
            assert rule.inner_text() == (
                "p ≥ 0.03 for 2 steps\nwarned ≥ 72 h: 10 of 29 failures, 34% (90%: 20–50%)\n"
                "precision 96% of 25 alerts (90%: 88–100%) on 6 tools not trained on"
            )
            first = page.locator(f"#models tbody tr:has(td:text-is('{case.model_version}')) td.lines")
            unmeasured = "not measured on this release (a default, or its parent's rule)"
            assert first.inner_text() == f"p ≥ 0.03 for 2 steps\n{unmeasured}"
            page.click("#tabs button[data-tab=tuning]")
            # the proposal reads as the change it makes and what each model expects of it
            proposed = page.locator("#tuning tr:has-text('etch-01')")
            proposed.locator("td:has-text('rf_power 500 \u2192 505 (+1.0%)')").wait_for()
            assert "yield +0.40 points, energy \u22120.25 kWh per lot\ntuning model: yield +0.10 points" in (
                proposed.inner_text()
            )
            page.click("#tuning tr:has-text('etch-01') button:has-text('Approve')")
            page.wait_for_selector("#tuning td:has-text('approval')")
            page.wait_for_selector("#tuning td:has-text('by olga')")
            expired = page.locator("#tuning tr:has-text('etch-02')")
            assert "no decision within 600 s" in expired.inner_text()
            assert expired.locator("button").count() == 0, "an expired proposal cannot be approved"

            token = page.evaluate("sessionStorage.getItem('fabpm-token')")
            page.click("#logout")
            # Signing out ends the session on the server too: the token no longer opens anything.
            me = f"{base}/api/me"
            _until(lambda: httpx.get(me, headers={"Authorization": f"Bearer {token}"}).status_code == 401)
            _sign_in(page, base, "vic")
            page.click("#tabs button[data-tab=cases]")
            page.select_option("#case-filter", "all")
            page.wait_for_selector("#cases td:has-text('by operator')")
            assert page.locator("#cases button:has-text('Healthy')").count() == 0  # no label buttons
            # Anyone may look at the window: one chart per sensor of the tool's type, named for it.
            page.click("#cases tr:has-text('etch-01') button:has-text('Show')")
            page.wait_for_selector("#case-detail figcaption:has-text('chamber_pressure')")
            pressure = page.locator("#case-detail figcaption:has-text('chamber_pressure')").inner_text()
            assert "mTorr" in pressure and "typical 40" in pressure, pressure  # in units, not z-scores
            assert "in their units" in page.locator("#case-detail .says").inner_text()
            sensors = len(tool_type("plasma_etch").sensor_names)
            assert page.locator("#case-detail figure").count() == sensors + 1  # + processing
            assert not page.locator("#tabs button[data-tab=users]").is_visible()  # admins only

            # An admin adds a user, issues and revokes an API token, and removes the user.
            page.click("#logout")
            _sign_in(page, base, "ada")
            page.click("#tabs button[data-tab=users]")
            page.wait_for_selector("#users td:has-text('olga')")
            page.fill("#user-form input[name=username]", "neo")
            page.select_option("#user-form select[name=role]", "operator")
            page.fill("#user-form input[name=password]", "neo-password")
            page.click("#user-form button[type=submit]")
            page.wait_for_selector("#users tr:has-text('neo'):has-text('operator')")
            page.fill("#token-form input[name=name]", "grafana")
            page.click("#token-form button[type=submit]")
            page.wait_for_selector("#new-token:has-text('grafana')")
            shown = page.locator("#new-token").inner_text().rsplit(" ", 1)[-1]
            assert service.users.resolve(shown).username == "ada"
            page.click("#api-tokens tr:has-text('grafana') button:has-text('Revoke')")
            page.wait_for_selector("#api-tokens tr:has-text('grafana')", state="detached")
            assert service.users.tokens() == []
            page.once("dialog", lambda d: d.accept())
            page.click("#users tr:has-text('neo') button:has-text('Remove')")
            page.wait_for_selector("#users tr:has-text('neo')", state="detached")
            assert [u.username for u in service.users.all()] == ["ada", "olga", "vic"]
            assert page.locator("#users tr:has-text('ada') button").count() == 0  # not oneself
            page.click("#tabs button[data-tab=audit]")  # who did all that, refused attempts included
            page.wait_for_selector("#audit tr:has-text('DELETE /api/users/'):has-text('username=neo')")
            added = page.locator("#audit tr:has-text('POST /api/users'):has-text('neo (operator)')")
            assert added.count() == 1
            page.fill("#audit-form input[name=actor]", "vic")
            page.click("#audit-form button[type=submit]")
            page.wait_for_function(  # the filtered table, not the one still shown while it loads
                "() => { const who = [...document.querySelectorAll('#audit tbody td:nth-child(2)')]"
                ".map((td) => td.textContent); return who.length > 0 && who.every((w) => w === 'vic'); }"
            )
            assert page.locator("#audit tbody tr:has-text('POST /api/auth/token')").count() > 0
            with page.expect_download() as download:  # the table as a CSV file, as shown
                page.click("#audit button.csv")
            lines = Path(download.value.path()).read_text(encoding="utf-8-sig").splitlines()
            assert lines[0] == "Time,User,Role,From,Action,On,Outcome"
            assert len(lines) > 1 and all(",vic," in line for line in lines[1:])
            injected = page.evaluate(CSV_OF_A_HOSTILE_TABLE)  # a formula is shown, never run
            assert injected == 'a,b\r\n"\'=HYPERLINK(""x"")",-1.5\r\n"say ""hi"", then go",\r\n'
            page.click("#logout")  # the token shown once must not stay on the page for the next user
            assert page.evaluate("document.querySelector('#new-token').textContent") == ""
        finally:
            browser.close()
