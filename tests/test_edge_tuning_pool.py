"""The run-to-run optimiser: inside the envelope and the step limit, converges to the optimum of
a synthetic quadratic process, follows a moving optimum, and pools tools of one type."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from edge.config import TuningConfig
from edge.tuning import Tuner
from edge.tuning_pool import PooledOptimizer
from edge.tuning_r2r import surrogate_curvature
from shared.messages import Tuning

NAMES = ["a", "b", "c"]
ENVELOPE = {"a": (0.0, 10.0), "b": (100.0, 300.0), "c": (-1.0, 1.0)}
STEP = {n: 0.04 * (hi - lo) for n, (lo, hi) in ENVELOPE.items()}
Q = np.array([200.0, 250.0, 160.0])  # yield points per envelope span²
LO = np.array([v[0] for v in ENVELOPE.values()])
SPAN = np.array([v[1] - v[0] for v in ENVELOPE.values()])


def process(u: dict[str, float], opt_z: np.ndarray) -> float:
    z = (np.array([u[n] for n in NAMES]) - LO) / SPAN
    return float(95.0 - np.sum(Q * (z - opt_z) ** 2))


def run(
    pool: PooledOptimizer,
    optimum: object,
    tools: int = 1,
    lots: int = 200,
    noise: float = 0.6,
    seed: int = 0,
) -> list[list[float]]:
    """Lots every 1.5 h per tool; returns per lot the nominal's distance (spans) to the optimum."""
    rng = np.random.default_rng(seed)
    cur = {f"t{j}": {"a": 5.0, "b": 200.0, "c": 0.0} for j in range(tools)}
    errors: list[list[float]] = []
    for i in range(lots):
        row = []
        for j in range(tools):
            tool = f"t{j}"
            t = i * 5400.0 + j * 60.0
            opt_z = optimum(t)  # type: ignore[operator]
            y = process(cur[tool], opt_z) + float(rng.normal(0.0, noise))
            pool.observe(tool, t, cur[tool], y, 10.0)
            nxt = pool.propose(tool, cur[tool])
            for n in NAMES:
                lo, hi = ENVELOPE[n]
                assert lo <= nxt[n] <= hi, (n, nxt[n])
                assert abs(nxt[n] - cur[tool][n]) <= STEP[n] + 1e-12
            cur[tool] = nxt
            nominal = (pool.nominal[tool] - LO) / SPAN
            row.append(float(np.max(np.abs(nominal - opt_z))))
        errors.append(row)
    return errors


def make(**kw: object) -> PooledOptimizer:
    return PooledOptimizer(
        NAMES,
        ENVELOPE,
        STEP,
        {"yield": 1.0, "energy": 0.0},
        curvature=dict(zip(NAMES, [180.0] * 3, strict=True)),
        **kw,
    )  # type: ignore[arg-type]


def test_converges_to_a_fixed_optimum_inside_the_limits() -> None:
    target = np.array([0.75, 0.3, 0.6])
    errors = run(make(), lambda t: target, lots=200)
    assert errors[0][0] > 0.2
    assert np.mean([e[0] for e in errors[-50:]]) < 0.06


def test_follows_a_moving_optimum_better_than_standing_still() -> None:
    def moving(t: float) -> np.ndarray:
        return 0.5 + 0.15 * np.sin(2 * np.pi * t / (8 * 86400.0) + np.array([0.0, 1.0, 2.0]))

    errors = run(make(), moving, tools=4, lots=150)
    tracked = np.mean(errors[-100:])
    still = np.mean([np.max(np.abs(np.array([0.5, 0.5, 0.5]) - moving(i * 5400.0))) for i in range(50, 150)])
    assert tracked < 0.5 * still, (tracked, still)


def test_a_jump_in_the_optimum_is_followed() -> None:
    def jump(t: float) -> np.ndarray:
        return np.array([0.4, 0.5, 0.5]) if t < 60 * 5400.0 else np.array([0.7, 0.4, 0.6])

    errors = run(make(), jump, tools=4, lots=140)
    assert np.mean(errors[60]) > 0.2
    assert np.mean(errors[-20:]) < 0.08


def test_pooling_beats_one_tool_alone() -> None:
    def moving(t: float) -> np.ndarray:
        return 0.5 + 0.15 * np.sin(2 * np.pi * t / (6 * 86400.0) + np.array([0.0, 1.0, 2.0]))

    alone = np.mean(run(make(), moving, tools=1, lots=150, seed=3)[-100:])
    pooled = np.mean(run(make(), moving, tools=6, lots=150, seed=3)[-100:])
    assert pooled < alone


def test_proposals_at_the_envelope_edge_stay_inside() -> None:
    # The optimum lies outside the envelope: the tool sits on the edge, never beyond it.
    errors = run(make(dither=0.05), lambda t: np.array([1.3, -0.2, 0.5]), lots=120, noise=0.0)
    assert errors  # every proposal was checked inside run()


def test_the_pool_expects_a_step_towards_its_optimum_to_raise_the_yield() -> None:
    """expect(): the yield change the pool's own fit predicts, positive towards the fitted
    optimum and negative away from it (what the operator sees beside a proposal)."""
    target = np.array([0.75, 0.3, 0.6])
    pool = make()
    run(pool, lambda t: target, lots=120, noise=0.0)
    here = {"a": 5.0, "b": 200.0, "c": 0.0}  # z = (0.5, 0.5, 0.5)
    towards = {"a": 5.3, "b": 196.0, "c": 0.02}
    away = {"a": 4.7, "b": 204.0, "c": -0.02}
    up, down = pool.expect("t0", here, towards), pool.expect("t0", here, away)
    assert up is not None and down is not None
    assert up[0] > 0 > down[0]
    assert pool.expect("nobody", here, towards) is None


def test_non_finite_lots_are_ignored_and_bad_arguments_refused() -> None:
    pool = make()
    pool.observe("t0", 0.0, {"a": 5.0, "b": 200.0, "c": 0.0}, float("nan"), 1.0)
    assert pool.lots == {}
    assert pool.propose("t0", {"a": 5.0, "b": 200.0, "c": 0.0})["a"] == pytest.approx(5.0, abs=0.2 + 1e-9)
    with pytest.raises(ValueError, match="no envelope"):
        PooledOptimizer(["x"], ENVELOPE, STEP, {})
    with pytest.raises(ValueError, match="memory_days"):
        PooledOptimizer(NAMES, ENVELOPE, STEP, {}, memory_days=0.0)


def test_surrogate_curvature_of_a_known_quadratic() -> None:
    def predict(x: np.ndarray) -> np.ndarray:
        return 90.0 - 3.0 * (x[:, 0] - 1.0) ** 2 - 0.5 * (x[:, 1] - 2.0) ** 2 + 0.0 * x[:, 2]

    curv = surrogate_curvature(predict, [1.0, 2.0, 7.0], [10.0, 2.0])
    assert curv == pytest.approx([300.0, 2.0], rel=1e-6)
    flat = surrogate_curvature(lambda x: x[:, 0], [1.0, 2.0], [1.0])
    assert np.isnan(flat[0])


class _FakeModel:
    """Stands in for the edge-tuning ONNX model: a known quadratic surrogate."""

    setpoints = ["rf_power_sp", "pressure_sp"]
    context = ["last_lot_yield", "last_lot_energy_kwh"]
    tool_type = "plasma_etch"
    version = "fake"
    # where its training lots ran (setpoints, then context): rf power 1200 ± 50 W, pressure 40 ± 5
    manifest = SimpleNamespace(
        input_spec={"mean": [1200.0, 40.0, 90.0, 20.0], "std": [50.0, 5.0, 1.0, 1.0]}, metrics={}
    )

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        yld = 95.0 - 1e-4 * (x[:, 0] - 1300.0) ** 2 - 1e-2 * (x[:, 1] - 50.0) ** 2
        return yld, np.full(len(x), 20.0)


def test_tuner_pooled_proposes_once_per_lot_inside_the_guards() -> None:
    cfg = TuningConfig(
        mode="auto",
        optimiser="pooled",
        envelope={"plasma_etch": {"rf_power_sp": (1100.0, 1400.0), "pressure_sp": (20.0, 80.0)}},
        max_step={"plasma_etch": {"rf_power_sp": 20.0, "pressure_sp": 3.0}},
    )
    records: list[object] = []

    async def never(*_: object) -> float:
        raise AssertionError("propose must not write")

    async def no_range(*_: object) -> None:
        return None

    now = [0.0]
    tuner = Tuner(cfg, "s", "e", never, no_range, records.append, clock=lambda: now[0])
    model = _FakeModel()
    current = {"rf_power_sp": 1200.0, "pressure_sp": 40.0}
    lot = {"last_lot_yield": 90.0, "last_lot_energy_kwh": 20.0}
    msg = tuner.propose(model, "etch-01", "plasma_etch", current, lot)  # type: ignore[arg-type]
    assert msg is not None and msg.setpoints
    assert msg.tool_type == "plasma_etch"  # the cloud learns the tool's type (units) from it
    for name, value in msg.setpoints.items():
        lo, hi = cfg.envelope["plasma_etch"][name]
        assert lo <= value <= hi
        assert abs(value - current[name]) <= cfg.max_step["plasma_etch"][name]
    # The same lot again (a periodic round): nothing new to learn, nothing proposed.
    assert tuner.propose(model, "etch-01", "plasma_etch", current, lot) is None  # type: ignore[arg-type]
    # The surrogate's curvature (rf: 1e-4·300² = 9 points per span²) is below the floor.
    pool = tuner.pools["plasma_etch"]
    assert pool.q.tolist() == [150.0, 150.0]  # pressure: 1e-2·60² = 36, also below the floor
    # One lot is no fit: the expectation shown is the offline surrogate's alone, and named so.
    assert set(msg.expected) == {"surrogate_yield_delta", "surrogate_energy_delta"}
    assert "exploratory step" in msg.reason
    now[0] = 5400.0
    lot2 = {"last_lot_yield": 91.0, "last_lot_energy_kwh": 20.5}
    msg2 = tuner.propose(model, "etch-01", "plasma_etch", current, lot2)  # type: ignore[arg-type]
    assert msg2 is not None
    assert len(pool.lots["etch-01"]) == 2
    # Two lots: the pool's own fit says what it expects of its proposal, the surrogate beside it.
    believed = pool.expect("etch-01", current, {**current, **msg2.setpoints})
    assert believed is not None
    assert msg2.expected["yield_delta"] == pytest.approx(believed[0])
    assert msg2.expected["energy_delta"] == pytest.approx(believed[1])
    assert {"surrogate_yield_delta", "surrogate_energy_delta"} <= set(msg2.expected)
    # Its fit sees the optimum about here: the step is mostly the probe around it, which costs a
    # little yield, and an operator asked to approve an expected loss is told why.
    assert believed[0] < 0
    assert msg2.reason == (
        "pooled optimiser, tuning model fake: the step probes around the optimum its fit sees (±2% of "
        "each setpoint's range) to keep learning where the optimum moves; the small loss expected is "
        "that probe's"
    )


def test_a_view_the_release_s_step_check_did_not_bear_out_is_left_out() -> None:
    """The release compared the model's predicted changes with the held-out tools' setpoint
    changes: its yield view had the sign right in 47% (a coin), its energy view in 90%. The
    operator sees the energy view only, and why the yield view is missing."""
    tuner = Tuner(_advise(), "s", "e", _no_range, _no_range, lambda _: None, clock=lambda: 0.0)
    model = _FakeModel()
    checked = {"val_step_pairs": 19.0, "val_step_yield_sign": 0.47, "val_step_yield_r": 0.26}
    model.manifest = SimpleNamespace(  # type: ignore[misc]
        input_spec=model.manifest.input_spec,
        metrics=checked | {"val_step_energy_sign": 0.9, "val_step_energy_r": 0.95},
    )
    lot = {"last_lot_yield": 90.0, "last_lot_energy_kwh": 20.0}
    msg = tuner.propose(model, "etch-01", "plasma_etch", {"rf_power_sp": 1200.0, "pressure_sp": 40.0}, lot)  # type: ignore[arg-type]
    assert msg is not None
    assert set(msg.expected) == {"surrogate_energy_delta"}
    said = "tuning model's yield view left out (checked on 19 held-out setpoint changes: " + (
        "yield sign right 47%, r 0.26)"
    )
    assert said in msg.reason
    assert "energy view" not in msg.reason


def test_the_surrogate_s_view_is_left_out_of_a_step_beyond_its_training_lots() -> None:
    """Its figures for a step outside mean ± 2 std of its training lots are extrapolation: not shown,
    and the reason names the setpoint (an optimiser may go where the surrogate never saw data)."""
    tuner = Tuner(_advise(), "s", "e", _no_range, _no_range, lambda _: None, clock=lambda: 0.0)
    model = _FakeModel()
    current = {"rf_power_sp": 1390.0, "pressure_sp": 40.0}  # power already far above 1200 ± 2 · 50
    msg = tuner.propose(
        model, "etch-01", "plasma_etch", current, {"last_lot_yield": 90.0, "last_lot_energy_kwh": 20.0}
    )  # type: ignore[arg-type]
    assert msg is not None and "rf_power_sp" in msg.setpoints
    assert not any(k.startswith("surrogate_") for k in msg.expected)
    assert "rf_power_sp outside the tuning model's training lots: its view left out" in msg.reason


def _advise(**kw: object) -> TuningConfig:
    """Advise mode with the pooled optimiser, inside a small etch envelope."""
    return TuningConfig(
        mode="advise",
        optimiser="pooled",
        envelope={"plasma_etch": {"rf_power_sp": (1100.0, 1400.0), "pressure_sp": (20.0, 80.0)}},
        max_step={"plasma_etch": {"rf_power_sp": 20.0, "pressure_sp": 3.0}},
        **kw,  # type: ignore[arg-type]
    )


def _approval(proposal: Tuning, actor: str) -> Tuning:
    """What the cloud sends when an operator approves ``proposal``."""
    return Tuning(
        edge_id="cloud",
        site="s",
        tool_id=proposal.tool_id,
        action="approval",
        proposal_id=proposal.proposal_id,
        setpoints=proposal.setpoints,
        actor=actor,
    )


async def _no_range(*_: object) -> None:
    return None


def test_advise_keeps_one_open_proposal_per_tool_and_publishes_expiry() -> None:
    """Operators decide one step at a time per tool; what nobody decided on is closed, not left
    looking approvable; an approval the edge no longer knows is answered, not ignored."""
    cfg = _advise(approval_timeout_s=100.0)
    records: list[Tuning] = []

    async def never(*_: object) -> float:
        raise AssertionError("advise mode writes only on approval")

    now = [0.0]
    tuner = Tuner(cfg, "s", "e", never, _no_range, records.append, clock=lambda: now[0])  # type: ignore[arg-type]
    model = _FakeModel()
    current = {"rf_power_sp": 1200.0, "pressure_sp": 40.0}

    def lot(i: int, tool: str = "etch-01") -> Tuning | None:
        ctx = {"last_lot_yield": 90.0 + i, "last_lot_energy_kwh": 20.0 + i}
        return tuner.propose(model, tool, "plasma_etch", current, ctx)  # type: ignore[arg-type]

    first = lot(0)
    assert first is not None and tuner.open_proposal("etch-01") == first.proposal_id
    now[0] = 50.0
    assert lot(1) is None, "a second proposal while the first waits"
    assert len(tuner.pools["plasma_etch"].lots["etch-01"]) == 2, "the waiting tool's lots still count"
    other = lot(1, "etch-02")
    assert other is not None, "another tool is not held back"
    now[0] = 120.0  # etch-01's proposal is past its timeout, etch-02's (made at 50 s) is not
    again = lot(2)
    assert again is not None and again.proposal_id != first.proposal_id
    expired = [r for r in records if r.action == "expired"]
    assert [(r.tool_id, r.proposal_id) for r in expired] == [("etch-01", first.proposal_id)]
    assert set(tuner.pending) == {again.proposal_id, other.proposal_id}
    late = _approval(first, "alice")
    asyncio.run(tuner.on_command(late, lambda _t: "plasma_etch", lambda _t, n: current[n]))
    assert records[-1].action == "refused" and records[-1].proposal_id == first.proposal_id
    assert "unknown to this edge" in records[-1].reason and tuner.applied == 0


def test_open_proposals_survive_a_restart_of_the_edge(tmp_path) -> None:
    """An approval that arrives after the edge restarted is still applied; a damaged state file
    costs the open proposals, not the start."""
    cfg = _advise()
    state = tmp_path / "state" / "tuning_pending.json"
    records: list[Tuning] = []
    written: dict[str, float] = {}

    async def write(_tool: str, name: str, value: float) -> float:
        written[name] = value
        return value

    def start() -> Tuner:
        return Tuner(cfg, "s", "e", write, _no_range, records.append, pending_path=state)  # type: ignore[arg-type]

    model = _FakeModel()
    current = {"rf_power_sp": 1200.0, "pressure_sp": 40.0}
    proposal = start().propose(
        model, "etch-01", "plasma_etch", current, {"last_lot_yield": 90.0, "last_lot_energy_kwh": 20.0}
    )  # type: ignore[arg-type]
    assert proposal is not None and state.exists()
    again = start()  # the restarted edge
    assert again.open_proposal("etch-01") == proposal.proposal_id
    lot = {"last_lot_yield": 91.0, "last_lot_energy_kwh": 20.0}
    assert again.propose(model, "etch-01", "plasma_etch", current, lot) is None  # type: ignore[arg-type]
    asyncio.run(
        again.on_command(_approval(proposal, "olga"), lambda _t: "plasma_etch", lambda _t, n: current[n])
    )
    assert written == proposal.setpoints and again.applied == len(proposal.setpoints)
    assert start().pending == {}, "the decided proposal is no longer open after another restart"
    state.write_text("{not json")
    assert start().pending == {}


def test_pooled_learning_survives_a_restart_of_the_edge(tmp_path, caplog) -> None:
    """A restarted edge's optimiser goes on from the lots it had seen (the same next target as
    an edge that never stopped), does not count the last lot twice, and a state file that does
    not fit (damaged, other setpoints) costs the learning, not the start."""
    cfg = TuningConfig(
        mode="auto",
        optimiser="pooled",
        envelope={"plasma_etch": {"rf_power_sp": (1100.0, 1400.0), "pressure_sp": (20.0, 80.0)}},
        max_step={"plasma_etch": {"rf_power_sp": 20.0, "pressure_sp": 3.0}},
    )
    path = tmp_path / "state" / "tuning_pools.json"
    now = [0.0]

    async def never(*_: object) -> float:
        raise AssertionError("propose must not write")

    def start(p: object = path) -> Tuner:
        return Tuner(cfg, "s", "e", never, _no_range, lambda _m: None, clock=lambda: now[0], pools_path=p)  # type: ignore[arg-type]

    model = _FakeModel()
    rng = np.random.default_rng(3)
    current = {t: {"rf_power_sp": 1200.0, "pressure_sp": 40.0} for t in ("etch-01", "etch-02")}

    def lot(tuner: Tuner, tool: str, i: int) -> dict[str, float]:
        ctx = {"last_lot_yield": 90.0 + float(rng.normal()), "last_lot_energy_kwh": 20.0 + 0.1 * i}
        msg = tuner.propose(model, tool, "plasma_etch", current[tool], ctx)  # type: ignore[arg-type]
        if msg is not None:
            current[tool].update(msg.setpoints)
        return ctx

    first = start()
    for i in range(12):
        now[0] = i * 60.0  # one lot per tool a minute: saved at most every POOLS_SAVE_S
        last = lot(first, "etch-01", i)
        lot(first, "etch-02", i)
    first.save_pools()  # what the daemon does at its stop
    again = start()
    assert again.pools == {}, "taken back at the type's first lot, not before"
    assert again.propose(model, "etch-01", "plasma_etch", current["etch-01"], last) is None, (  # type: ignore[arg-type]
        "the lot reported before the stop is not a new lot after it"
    )
    now[0] += 60.0
    sp = dict(current["etch-02"])
    new_lot = {"last_lot_yield": 91.5, "last_lot_energy_kwh": 21.0}
    for tuner in (first, again):  # the edge that never stopped, and the restarted one
        assert tuner.propose(model, "etch-02", "plasma_etch", sp, new_lot) is not None  # type: ignore[arg-type]
    pool, resumed = first.pools["plasma_etch"], again.pools["plasma_etch"]
    assert {t: len(q) for t, q in resumed.lots.items()} == {"etch-01": 12, "etch-02": 13}
    assert np.allclose(resumed.target("etch-01"), pool.target("etch-01"))  # type: ignore[arg-type]
    assert {t: v.tolist() for t, v in resumed.nominal.items()} == {
        t: v.tolist() for t, v in pool.nominal.items()
    }

    other = tmp_path / "other.json"
    first.save_pools()
    text = path.read_text().replace('"rf_power_sp", "pressure_sp"', '"rf_power_sp", "gas_flow_sp"')
    other.write_text(text)
    fresh = start(other)
    with caplog.at_level("WARNING"):
        lot(fresh, "etch-01", 99)
    assert "saved optimiser state not used" in caplog.text
    assert len(fresh.pools["plasma_etch"].lots["etch-01"]) == 1
    other.write_text("{not json")
    assert start(other)._saved_pools == {}


def test_an_approval_for_a_tool_no_longer_configured_is_refused(tmp_path) -> None:
    """A proposal made before a restart whose config dropped its tool: the approval is answered
    'refused' with the reason, and nothing is written."""
    from edge.errors import WriteRefused

    state = tmp_path / "tuning_pending.json"
    records: list[Tuning] = []

    async def never(*_: object) -> float:
        raise AssertionError("nothing may be written")

    tuner = Tuner(_advise(), "s", "e", never, _no_range, records.append, pending_path=state)  # type: ignore[arg-type]
    current = {"rf_power_sp": 1200.0, "pressure_sp": 40.0}
    proposal = tuner.propose(
        _FakeModel(), "etch-09", "plasma_etch", current, {"last_lot_yield": 90.0, "last_lot_energy_kwh": 20.0}
    )  # type: ignore[arg-type]
    assert proposal is not None

    def gone(tool: str) -> str:
        raise WriteRefused(f"{tool} is not configured on this edge")

    restarted = Tuner(_advise(), "s", "e", never, _no_range, records.append, pending_path=state)  # type: ignore[arg-type]
    asyncio.run(restarted.on_command(_approval(proposal, "olga"), gone, lambda _t, n: current[n]))
    assert records[-1].action == "refused" and records[-1].proposal_id == proposal.proposal_id
    assert "not configured" in records[-1].reason and restarted.refused == 1 and restarted.pending == {}
