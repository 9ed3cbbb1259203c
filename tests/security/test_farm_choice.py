"""Audit finding 8, the farm: the device a run measures on is the one the user chose, not the one
most agents claim to be. Agents report their own facts, so look-alikes in numbers must not take a
run (its models go to them, their numbers go into the run and its cache rows).

Stand-in agents on loopback (threads of this test, see test_agent_replies.StandIn) answer
/fingerprint with the real device's facts or a look-alike's.
"""

from __future__ import annotations

import dataclasses

import pytest

from edgeprune.errors import UserError
from edgeprune.profiling.farm import FarmBackend
from edgeprune.profiling.fingerprint import compose_fingerprint, fingerprint_hash

from .test_agent_replies import FACTS, GOOD_STATS, _profile, send_reply, stand_in  # noqa: F401 - stand_in is a fixture

LOOK_ALIKE = {**FACTS, "cpu": "a look-alike board"}


def _agent(stand_in, facts):
    def fingerprint(conn, path, body):
        send_reply(conn, 200, {"device": facts, "edgeprune": "test", "max_upload_bytes": 1 << 20})

    return stand_in({"/fingerprint": fingerprint, "/measure": lambda c, p, b: send_reply(c, 200, {"stats": GOOD_STATS})})


def _farm(profile, urls, warnings=None):
    farm = FarmBackend(profile, urls, (warnings if warnings is not None else []).append)
    summary = farm.summary()
    fingerprint = farm.fingerprint()
    farm.close()
    return summary, fingerprint


def test_look_alikes_in_numbers_do_not_take_the_run_from_the_first_agent_listed(stand_in):
    real = _agent(stand_in, FACTS)
    fakes = [_agent(stand_in, LOOK_ALIKE) for _ in range(3)]
    warnings: list[str] = []
    summary, fingerprint = _farm(_profile(None), [real.url] + [f.url for f in fakes], warnings)
    assert [a["url"] for a in summary["agents"]] == [real.url] and summary["fingerprint_of"] == real.url
    assert fingerprint_hash(fingerprint) == fingerprint_hash(compose_fingerprint(_profile(None), FACTS))  # the cache's key
    assert sorted(e["agent"] for e in summary["left_out"]) == sorted(f.url for f in fakes)
    assert all("differs" in e["reason"] and real.url in e["reason"] for e in summary["left_out"]) and len(warnings) == 3


def test_the_profiles_own_agent_decides_wherever_it_is_listed(stand_in):
    fakes = [_agent(stand_in, LOOK_ALIKE) for _ in range(2)]
    real = _agent(stand_in, FACTS)
    other_real = _agent(stand_in, FACTS)
    profile = _profile(real.url + "/")  # as written in the profile, with or without the slash
    summary, _ = _farm(profile, [fakes[0].url, real.url, fakes[1].url, other_real.url])
    assert [a["url"] for a in summary["agents"]] == [real.url, other_real.url] and summary["fingerprint_of"] == real.url


def test_a_first_agent_that_does_not_answer_passes_the_choice_to_the_next_listed(stand_in):
    real = _agent(stand_in, FACTS)
    fakes = [_agent(stand_in, LOOK_ALIKE) for _ in range(2)]
    summary, _ = _farm(_profile(None), ["http://127.0.0.1:1", real.url, *(f.url for f in fakes)])
    assert [a["url"] for a in summary["agents"]] == [real.url]
    reasons = {e["agent"]: e["reason"] for e in summary["left_out"]}
    assert "did not answer" in reasons["http://127.0.0.1:1"] and all("differs" in reasons[f.url] for f in fakes)


def test_no_agent_answering_is_still_a_one_line_error():
    with pytest.raises(UserError, match="none of the 2 agent"):
        FarmBackend(dataclasses.replace(_profile(None)), ["http://127.0.0.1:1", "http://127.0.0.1:2"])
