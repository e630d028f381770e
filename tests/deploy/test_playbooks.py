"""The playbooks themselves: idempotence, check mode, the word-count job end to end."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.hosts import Cluster, PlaybookRun, playbook

pytestmark = pytest.mark.deploy


def test_second_run_changes_nothing(deployed: PlaybookRun) -> None:
    again = playbook("site.yml").check()
    assert again.recap()
    assert all(r["changed"] == 0 for r in again.recap().values()), again.output[-4000:]


def test_check_mode_on_a_deployed_cluster(deployed: PlaybookRun) -> None:
    run = playbook("site.yml", "--check").check()
    assert all(r["changed"] == 0 for r in run.recap().values()), run.output[-4000:]


def test_preflight_names_what_a_host_lacks(deployed: PlaybookRun) -> None:
    # As if paxmr supported Python up to 3.12 only: the Debian 13 host (3.13) must be refused
    # before anything is changed on it, with one message that says why.
    run = playbook("site.yml", "--check", "-e", "__paxmr_python_max=3.12")
    assert run.returncode != 0
    assert "paxmr2 cannot run paxmr: python3 is 3.13, paxmr needs 3.11 to 3.12." in run.output
    recap = run.recap()
    assert recap["paxmr2"]["failed"] == 1
    assert recap["paxmr2"]["changed"] == 0
    assert recap["paxmr1"]["failed"] == recap["paxmr3"]["failed"] == 0


def test_wordcount_job_end_to_end(cluster: Cluster) -> None:
    before = len(cluster.log(cluster.hosts[0])["entries"])
    run = playbook("wordcount.yml", "-e", "paxmr_wordcount_size=1MiB").check()
    assert "logs identical" in run.output
    log = cluster.wait_converged()
    new = log["entries"][before:]
    assert sorted(e["node"] for e in new) == [1, 2, 3]
    assert all(e["words"] > 0 for e in new)


def test_rolling_restart_keeps_the_log(cluster: Cluster) -> None:
    before = cluster.wait_converged()
    playbook("restart.yml").check()
    # The log itself; its freshness (which leader answered) changes with the restarts.
    after = cluster.wait_converged()
    assert (after["entries"], after["digest"]) == (before["entries"], before["digest"])


def test_uninstall_removes_everything_then_check_and_site_found_a_new_cluster(
    cluster: Cluster, testinfra_hosts: dict[str, Any]
) -> None:
    playbook("uninstall.yml").check()
    again = playbook("uninstall.yml").check()
    assert all(r["changed"] == 0 for r in again.recap().values()), again.output[-4000:]
    for host in testinfra_hosts.values():
        for path in [
            "/opt/paxmr",
            "/etc/paxmr",
            "/var/lib/paxmr",
            "/run/paxmr",
            "/usr/local/bin/paxmr",
        ]:
            assert not host.file(path).exists, path
        assert host.check_output("find /etc/systemd -name 'paxmr*'") == ""
        assert not host.user("paxmr").exists
        assert not host.group("paxmr-admin").exists
    # Check mode on hosts without paxmr previews the install and changes nothing.
    playbook("site.yml", "--check").check()
    assert not testinfra_hosts["paxmr1"].file("/opt/paxmr").exists
    playbook("site.yml").check()
    assert cluster.wait_converged()["entries"] == []
