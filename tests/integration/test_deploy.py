"""deploy/ and systemd/: alert rules pass their promtool tests, dashboards and alerts use only
metrics paydispatch exports, and the systemd units verify."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bpaydispatch_[a-z0-9_]+\b")
# Modules that define paydispatch metrics; importing them registers the metrics.
METRIC_MODULES = ["dispatcher.metrics"]


def exported_names() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("paydispatch_"):
            continue
        names.add(family.name)
        kind = family.type
        if kind == "counter":
            names.add(f"{family.name}_total")
        if kind == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
    return names


def expressions() -> dict[str, str]:
    found: dict[str, str] = {}
    dashboard = json.loads((DEPLOY / "grafana" / "paydispatch.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found[f"dashboard panel {panel['title']!r} {target['refId']}"] = target["expr"]
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    for i, match in enumerate(re.finditer(r"expr: (\|[^\n]*\n(?:\s{10,}.*\n)+|.*)", rules)):
        found[f"alert rule {i}"] = match.group(1)
    return found


def test_dashboard_and_alerts_reference_only_exported_metrics() -> None:
    exported = exported_names()
    found = expressions()
    assert len(found) >= 15
    unknown = {where: sorted(set(METRIC.findall(expr)) - exported) for where, expr in found.items()}
    assert {k: v for k, v in unknown.items() if v} == {}


def test_every_alert_in_the_rules_has_a_promtool_test() -> None:
    rules = set(re.findall(r"- alert: (\w+)", (DEPLOY / "prometheus" / "alerts.yml").read_text()))
    tested = set(
        re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    )
    assert rules == tested


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not found: apt-get install prometheus (.ci/run installs it)",
)
def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    folder = DEPLOY / "prometheus"
    promtool = shutil.which("promtool") or "promtool"
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not found (package systemd)"
)
def test_systemd_units_verify(tmp_path: Path) -> None:
    # The units name the installed path; verify them against this checkout's executable.
    executable = str(Path(sys.executable).with_name("paydispatch"))
    for unit in (ROOT / "systemd").iterdir():
        text = unit.read_text().replace("/opt/paydispatch/venv/bin/paydispatch", executable)
        (tmp_path / unit.name).write_text(text)
    (tmp_path / "paydispatch-worker@9301.service").symlink_to(
        tmp_path / "paydispatch-worker@.service"
    )
    units = [
        "paydispatch.target",
        "paydispatch-api.service",
        "paydispatch-sweeper.service",
        "paydispatch-worker@9301.service",
    ]
    analyze = shutil.which("systemd-analyze") or "systemd-analyze"
    result = subprocess.run(
        [analyze, "verify", "--man=no", *[str(tmp_path / u) for u in units]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_units_are_hardened_and_use_credentials() -> None:
    for name in (
        "paydispatch-api.service",
        "paydispatch-sweeper.service",
        "paydispatch-worker@.service",
    ):
        text = (ROOT / "systemd" / name).read_text()
        for line in (
            "User=paydispatch",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "LoadCredential=database_url:",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
        ):
            assert line in text, f"{name} lacks {line}"
