"""Failure physics: how each progressive failure mode shows in the sensors, and how fast it goes.

A mode starts at an *onset* (a Poisson process per mode and tool), then its health index
``h`` grows from 0 to 1 over a lognormal time-to-failure around the catalog's
``mean_days_to_failure``; at ``h = 1`` the tool fails. Each precursor sensor moves by
``signature × h²`` (slow at first, faster near the end) times the sensor's scale, partly or not
at all while the tool idles (reflected RF power only shows under plasma), and wear modes also
make their sensors noisier (``noise_gain``). Maintenance resets ``h``. Sudden modes have no
signature: they strike without precursors.

Signatures are relative to the sensor's scale (``max(|nominal|, |nominal - idle|)``); several
stay within the spread that recipes cause on their own, so one sensor's threshold is not enough.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.equipment import TOOL_TYPES, ToolType


@dataclass(frozen=True, slots=True)
class Signature:
    """How one mode moves one sensor at full degradation (h = 1)."""

    rel: float  # shift, as a fraction of the sensor's scale (signed)
    idle: float = 1.0  # fraction of the shift visible while the tool idles
    noise_gain: float = 0.0  # extra noise, in multiples of the sensor's noise


G = Signature
SIGNATURES: dict[str, dict[str, Signature]] = {
    # plasma etch
    "rf_match_drift": {
        "rf_reflected_power": G(1.6, 0.0, 0.8),
        "match_c1": G(0.12),
        "match_c2": G(-0.10),
        "dc_bias": G(-0.07, 0.0),
    },
    "chamber_deposition": {
        "chamber_pressure": G(0.09, 0.5),
        "throttle_valve": G(0.16),
        "oes_endpoint": G(-0.14, 0.0),
        "wall_temp": G(0.05),
    },
    "esc_degradation": {
        "esc_temp": G(0.08, 0.5, 1.0),
        "he_backside_flow": G(0.35, 0.0, 0.5),
        "dc_bias": G(0.05, 0.0),
    },
    # CVD
    "heater_ageing": {
        "heater_power": G(0.16),
        "heater_temp": G(-0.02),
        "deposition_rate": G(-0.06, 0.0),
    },
    "mfc_drift": {
        "mfc_sih4": G(0.08, 0.0),
        "deposition_rate": G(0.05, 0.0),
        "chamber_pressure": G(0.04, 0.3),
    },
    "showerhead_clogging": {
        "chamber_pressure": G(0.10, 0.5),
        "showerhead_temp": G(0.06),
        "exhaust_pressure": G(-0.12, 0.5),
        "deposition_rate": G(-0.07, 0.0),
    },
    # CMP
    "pad_glazing": {
        "removal_rate": G(-0.12, 0.0),
        "pad_temp": G(0.06, 0.3),
        "pad_conditioner_torque": G(0.20, 0.0),
        "endpoint_signal": G(0.10, 0.0),
    },
    "spindle_bearing_wear": {
        "vibration_rms": G(1.2, 0.5, 2.5),
        "platen_motor_current": G(0.08, 0.5),
        "pad_temp": G(0.04, 0.3),
    },
    "slurry_line_clog": {
        "slurry_flow": G(-0.15, 0.0, 1.0),
        "removal_rate": G(-0.08, 0.0),
        "carrier_motor_current": G(0.08, 0.3),
    },
    # vacuum pump
    "bearing_wear": {
        "vibration_rms": G(1.5, 0.8, 2.5),
        "bearing_temp": G(0.15, 0.8),
        "motor_current": G(0.06, 0.8),
    },
    "rotor_deposition": {
        "motor_current": G(0.12, 0.6),
        "motor_power": G(0.12, 0.6),
        "body_temp": G(0.06, 0.6),
        "exhaust_pressure": G(0.02, 0.6),
    },
    "cooling_degradation": {
        "body_temp": G(0.12),
        "cooling_water_flow": G(-0.30),
        "bearing_temp": G(0.08),
    },
    # abatement
    "burner_fouling": {
        "combustion_temp": G(-0.06, 0.7),
        "fuel_flow": G(0.15, 0.7),
        "differential_pressure": G(0.06, 0.7),
    },
    "scrubber_clogging": {
        "differential_pressure": G(0.20),
        "scrubber_water_flow": G(-0.12),
        "scrubber_ph": G(-0.04),  # less fresh water through the packing: the liquor turns acid
        "inlet_pressure": G(0.01),
    },
    "fan_bearing_wear": {  # a tired fan pulls less: the pressure drop falls while its current rises
        "exhaust_fan_current": G(0.15, 1.0, 1.5),
        "differential_pressure": G(-0.08),
    },
}
del G


def progressive_modes(tool: ToolType) -> tuple[str, ...]:
    """The modes of ``tool`` that degrade with precursors, in catalog order."""
    return tuple(m.name for m in tool.modes if not m.sudden)


def sudden_modes(tool: ToolType) -> tuple[str, ...]:
    return tuple(m.name for m in tool.modes if m.sudden)


@dataclass(frozen=True)
class SignatureTable:
    """Per tool type, arrays over (progressive mode, sensor)."""

    modes: tuple[str, ...]
    rel: np.ndarray  # (M, S)
    idle: np.ndarray  # (M, S)
    noise_gain: np.ndarray  # (M, S)
    mean_ttf_days: np.ndarray  # (M,)


def signature_table(tool: ToolType) -> SignatureTable:
    modes = progressive_modes(tool)
    names = tool.sensor_names
    rel = np.zeros((len(modes), len(names)))
    idle = np.ones((len(modes), len(names)))
    gain = np.zeros((len(modes), len(names)))
    for i, mode in enumerate(modes):
        for sensor, sig in SIGNATURES[mode].items():
            j = names.index(sensor)
            rel[i, j], idle[i, j], gain[i, j] = sig.rel, sig.idle, sig.noise_gain
    ttf = np.array([m.mean_days_to_failure for m in tool.modes if not m.sudden])
    return SignatureTable(modes, rel, idle, gain, ttf)


def health(t_s: np.ndarray | float, onset_s: float, ttf_s: float) -> np.ndarray:
    """Health index in [0, 1] at ``t_s`` for an episode that began at ``onset_s``."""
    return np.clip((np.asarray(t_s, dtype=np.float64) - onset_s) / ttf_s, 0.0, 1.0)


def draw_ttf_s(rng: np.random.Generator, mean_days: float, spread: float) -> float:
    """Onset-to-failure time: lognormal with the given mean (days) and sigma ``spread``."""
    mu = np.log(mean_days) - 0.5 * spread**2
    return float(rng.lognormal(mu, spread) * 86400.0) if spread > 0 else mean_days * 86400.0


def _check_catalog() -> None:
    """Every progressive mode of the catalog has a signature on at least two of its sensors."""
    for tool in TOOL_TYPES.values():
        for mode in tool.modes:
            if mode.sudden:
                continue
            sig = SIGNATURES.get(mode.name)
            if sig is None or len(sig) < 2 or not set(sig) <= set(tool.sensor_names):
                raise RuntimeError(f"degradation: mode {mode.name!r} of {tool.name} lacks a valid signature")


_check_catalog()
