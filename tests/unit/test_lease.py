"""Leader election decisions (client-go's rules) and the operator's boolean settings."""

from autoparallel.controller.config import OperatorConfig
from autoparallel.controller.k8s_lease import LeaseRecord, Observation


def record(holder: str, renewed: str) -> LeaseRecord:
    return LeaseRecord(holder, renewed, 0, "1")


def test_a_free_or_own_lease_may_be_taken_at_once() -> None:
    observation = Observation()
    observation.update(None, now=0.0)
    assert observation.may_take("me", 15, now=0.0)
    observation.update(record("", "t0"), now=1.0)  # released
    assert observation.may_take("me", 15, now=1.0)
    observation.update(record("me", "t0"), now=2.0)
    assert observation.may_take("me", 15, now=2.0)


def test_a_held_lease_is_taken_only_after_it_went_unrenewed_for_its_duration() -> None:
    observation = Observation()
    observation.update(record("other", "t0"), now=100.0)
    assert not observation.may_take("me", 15, now=110.0)
    observation.update(record("other", "t1"), now=110.0)  # renewed: the clock starts again
    assert not observation.may_take("me", 15, now=124.0)
    observation.update(record("other", "t1"), now=124.0)  # unchanged since 110
    assert observation.may_take("me", 15, now=125.0)


def test_boolean_settings_parse_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUTOPARALLEL_LEADER_ELECT", "false")
    assert OperatorConfig.from_env().leader_elect is False
    monkeypatch.setenv("AUTOPARALLEL_LEADER_ELECT", "True")
    config = OperatorConfig.from_env()
    assert config.leader_elect is True
    assert config.to_env()["AUTOPARALLEL_LEADER_ELECT"] == "True"
