"""`vllama ps` prints what `ollama ps` prints: until when, and where the model runs."""

from __future__ import annotations

from vllama.cli.models_cmd import _processor, human_until

NOW = 1_800_000_000.0


def test_until() -> None:
    assert human_until("2027-01-15T08:04:00.000000+00:00", NOW) == "4 minutes from now"
    assert human_until("2027-01-15T08:00:30+00:00", NOW) == "30 seconds from now"
    assert human_until("2027-01-15T08:01:00Z", NOW) == "About a minute from now"
    assert human_until("2027-01-15T10:00:00+00:00", NOW) == "2 hours from now"
    assert human_until("3000-01-01T00:00:00.000000+00:00", NOW) == "Forever"
    assert human_until("2027-01-15T07:59:00+00:00", NOW) == "Stopping..."
    assert human_until(None, NOW) == "Never"


def test_processor() -> None:
    assert _processor(2_600_000_000, 0) == "100% CPU"
    assert _processor(3_000_000_000, 3_000_000_000) == "100% GPU"
    assert _processor(4_000_000_000, 3_000_000_000) == "25%/75% CPU/GPU"
