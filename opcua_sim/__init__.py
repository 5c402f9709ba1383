"""The OPC UA fab simulator: equipment physics, degradation, faults, the OPC UA address space.

Public API::

    opcua_sim.testing.running_sim(...)          async context manager: a server on a free port
    opcua_sim.export.export(scenario, days, out) the labelled data set (shared.dataset format)
    opcua_sim.process.lot_yield / lot_energy / oracle_setpoints   the process oracle (B9)
    opcua_sim.scenario.load_scenario / scale_tools / default_scenario
    opcua_sim.fab.Fab, SimClock                  the simulation itself
    opcua_sim.e10.from_series / from_transitions SEMI E10 uptime, MTBF, MTTR
    opcua_sim.errors                             SimError and its subclasses
"""
