"""The checker's pure helpers: where an instance is probed, and flag checks."""

from events.types import InstanceRegistered, SidecarPorts
from registrar.healthcheck.checker import Settings, probe_target, problems


def test_an_instance_with_a_sidecar_is_probed_at_the_sidecar_inbound_port():
    reg = InstanceRegistered(service="web", instance_id="w1", address="10.0.0.7", port=8080,
                             sidecar=SidecarPorts(inbound_port=15006, outbound_port=15001))
    assert probe_target(reg) == ("10.0.0.7", 15006)


def test_an_instance_without_a_sidecar_is_probed_at_its_port():
    reg = InstanceRegistered(service="web", instance_id="w1", address="10.0.0.7", port=8080, protocol="tcp")
    assert probe_target(reg) == ("10.0.0.7", 8080)


def test_defaults_are_valid_and_the_observer_names_the_checker():
    s = Settings(bootstrap="h:1", checker_id="hc-1")
    assert problems(s) == []
    assert s.observer == "healthcheck/hc-1"
    assert (s.interval, s.timeout, s.jitter, s.fall, s.rise, s.http_path, s.group) == (
        2.0, 1.0, 0.2, 3, 2, "/healthz", "meshlog-healthcheck")


def test_every_bad_setting_is_named():
    s = Settings(bootstrap="h:1", checker_id="", group="", interval=0, timeout=-1, jitter=1.0, fall=0, rise=0,
                 http_path="x")
    assert [flag for flag, _ in problems(s)] == [
        "--checker-id", "--group", "--interval", "--timeout", "--jitter", "--fall", "--rise", "--http-path"]
