"""The communication model of sequence parallelism (taylorshift.analysis.communication): values derived by hand
for d = 32, 8 heads, B = 1, float32, and the scaling laws the docs state."""

from __future__ import annotations

import pytest

from taylorshift.analysis.communication import (
    SCHEMES,
    break_even_tokens,
    comm_bytes,
    comm_messages,
    comm_time,
    project_step,
    state_bytes,
)


def test_state_bytes_by_hand():
    # F = (d+1)(d+2)/2 = 561 symmetric features, dv + 1 = 33 columns, 8 heads, 4 bytes
    assert state_bytes(1, 8, 32) == 561 * 33 * 8 * 4 == 592_416
    assert state_bytes(1, 8, 32, form="full") == (32 * 32 + 33) * 33 * 8 * 4


@pytest.mark.parametrize("n", [16_384, 65_536])
def test_bytes_per_layer_at_16k_and_64k(n):
    # two ranks: TaylorShift sends half of each of its two all-reduces (forward state, backward gradient) = 2 M
    assert comm_bytes("taylorshift", n, 2, 1, 8, 32) == 2 * 592_416
    kv = n * 8 * 64 * 4  # K and V of the whole sequence
    assert comm_bytes("ring", n, 2, 1, 8, 32) == 3 * kv / 2
    assert comm_bytes("allgather_kv", n, 2, 1, 8, 32) == kv


def test_scaling_laws():
    for world in (2, 8, 64):
        ts = [comm_bytes("taylorshift", n, world, 1, 8, 32) for n in (1024, 65_536)]
        ring = [comm_bytes("ring", n, world, 1, 8, 32) for n in (1024, 65_536)]
        assert ts[0] == ts[1]  # independent of N
        assert ring[1] == 64 * ring[0]  # linear in N
        assert comm_bytes("taylorshift_causal", 1024, world, 1, 8, 32) == 2 * (world - 1) * 592_416
    assert comm_bytes("taylorshift", 10**6, 1, 1, 8, 32) == 0  # one rank sends nothing
    n_star = break_even_tokens("taylorshift", 8, 1, 8, 32)
    assert comm_bytes("taylorshift", 1, 8, 1, 8, 32) == pytest.approx(comm_bytes("ring", n_star, 8, 1, 8, 32))
    n_star = break_even_tokens("taylorshift_causal", 8, 1, 8, 32)
    assert comm_bytes("taylorshift_causal", 1, 8, 1, 8, 32) == pytest.approx(comm_bytes("ring", n_star, 8, 1, 8, 32))


def test_time_model():
    t = comm_time("taylorshift", 4096, 4, 1, 8, 32, latency=1e-5, bandwidth=1e9)
    assert t == pytest.approx(
        1e-5 * comm_messages("taylorshift", 4) + comm_bytes("taylorshift", 4096, 4, 1, 8, 32) / 1e9
    )
    e = project_step("ring", 4096, 4, 1, 8, 32, seconds_per_unit=1e-9)
    assert e.compute == pytest.approx(4096**2 / 4 * 1e-9) and e.total == e.compute + e.comm
    e = project_step("taylorshift", 4096, 4, 1, 8, 32, seconds_per_unit=1e-6)
    assert e.compute == pytest.approx(1024e-6)


def test_bad_scheme():
    with pytest.raises(ValueError, match="scheme must be one of"):
        comm_bytes("nccl", 1, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="world must be >= 1"):
        comm_bytes(SCHEMES[0], 1, 0, 1, 1, 1)
