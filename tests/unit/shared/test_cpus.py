from __future__ import annotations

import pytest

from shared import cpus
from shared.cpus import cpu_budget


@pytest.mark.parametrize(("cpu_max", "expected"), [("max 100000\n", 2), ("100000 100000\n", 1), ("50000 100000\n", 1)])
def test_the_cpu_budget_is_the_affinity_capped_by_the_cgroup_quota(monkeypatch, tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(cpus, "_CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpu_budget() == expected


def test_without_a_cgroup_quota_the_affinity_counts(monkeypatch, tmp_path):
    monkeypatch.setattr(cpus, "_CGROUP_CPU_MAX", tmp_path / "absent")
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert cpu_budget() == 3
