"""The OPC UA fab simulator: equipment physics, degradation, faults, the OPC UA address space.

Public API::

    opcua_sim.testing.running_sim(tools, seed, speed, scenario, security, *, rate_hz, users, ...)
                                   async context manager: the server on a free port -> SimHandle
                                   (.endpoint, .fab, .clock, .stop(), .restart(), .advance(s))
    opcua_sim.export.export(scenario, days, out, *, sample_period_s=600, horizon_h=72)
                                   the labelled data set (shared.dataset format) -> DatasetInfo
    opcua_sim.process.lot_yield / lot_energy / oracle_setpoints / power_kw   the process oracle (B9)
    opcua_sim.scenario.load_scenario / default_scenario / scale_tools / with_seed / tag_count
    opcua_sim.fab.Fab (advance_to, readings, truth, listeners, oracle_for, expected_yield,
                   e10_metrics), SimClock
    opcua_sim.server.SimServer     the asyncua server around a Fab
    shared.e10.from_series / from_transitions / from_hours      SEMI E10 uptime, MTBF, MTTR
    opcua_sim.errors               SimError and its subclasses

Module map: scenario (files) → physics + degradation + process (pure tables and functions) →
tool + history (one tool's event timeline) → fab (all tools, clock, ground truth) → export /
plot (offline) and address_space + server + security (OPC UA) → testing, cli.
"""
