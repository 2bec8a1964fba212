"""Stage plans are deterministic, cover the fleet once, and honour groups and approvals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotrelease.config.inventory import DEFAULT_STAGES, Node, StageSpec, parse_inventory
from hotrelease.config.reader import Table
from hotrelease.errors import ConfigError
from hotrelease.rollout.plan import plan_stages


def fleet(n: int, groups: tuple[str, ...] = ()) -> list[Node]:
    return [Node(f"node-{i:02d}", f"http://127.0.0.1:{7000 + i}", None, groups)
            for i in range(n)]


def test_default_scheduled_plan_for_five_nodes():
    plans = plan_stages("greeter@1.1.0", fleet(5), DEFAULT_STAGES["scheduled"])
    assert [p.name for p in plans] == ["canary", "wave-1", "all"]
    assert [len(p.nodes) for p in plans] == [1, 1, 3]
    assert [p.needs_approval for p in plans] == [False, True, True]


def test_plan_is_a_function_of_release_and_inventory():
    nodes = fleet(12)
    first = plan_stages("greeter@1.1.0", nodes, DEFAULT_STAGES["scheduled"])
    assert plan_stages("greeter@1.1.0", list(reversed(nodes)),
                       DEFAULT_STAGES["scheduled"]) == first
    canaries = {plan_stages(f"greeter@1.{i}.0", nodes, DEFAULT_STAGES["scheduled"])[0].nodes
                for i in range(10)}
    assert len(canaries) > 1, "canary duty should rotate across releases"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=1, max_value=60),
       canary=st.integers(min_value=1, max_value=5),
       wave=st.integers(min_value=1, max_value=99))
def test_every_node_is_in_exactly_one_stage(n, canary, wave):
    stages = [StageSpec("canary", nodes=canary), StageSpec("wave", percent=wave),
              StageSpec("all", percent=100)]
    plans = plan_stages("x@1.0.0", fleet(n), stages)
    names = [name for p in plans for name in p.nodes]
    assert sorted(names) == sorted(node.name for node in fleet(n))
    assert len(plans[0].nodes) == min(canary, n)


def test_group_restricted_canary_only_picks_from_the_group():
    nodes = fleet(6) + [Node("canary-a", "http://127.0.0.1:1", None, ("canary",)),
                        Node("canary-b", "http://127.0.0.1:2", None, ("canary",))]
    stages = [StageSpec("canary", nodes=1, groups=("canary",)), StageSpec("all", percent=100)]
    for i in range(5):
        plans = plan_stages(f"g@1.{i}.0", nodes, stages)
        assert plans[0].nodes[0] in ("canary-a", "canary-b")
        assert len(plans[1].nodes) == 7


def test_gated_stages_replace_the_configured_flags():
    plans = plan_stages("x@1.0.0", fleet(5), DEFAULT_STAGES["scheduled"], gated=())
    assert not any(p.needs_approval for p in plans)
    plans = plan_stages("x@1.0.0", fleet(5), DEFAULT_STAGES["scheduled"], gated={"all"})
    assert [p.needs_approval for p in plans] == [False, False, True]


@pytest.mark.parametrize("n, gated, expected", [
    # One node: the canary is the whole fleet, so the gates of the empty later stages fall
    # to it: a major release never reaches the whole fleet without an approval.
    (1, {"wave-1", "all"}, [("canary", 1, True), ("wave-1", 0, False), ("all", 0, False)]),
    (1, {"all"}, [("canary", 1, True), ("wave-1", 0, False), ("all", 0, False)]),
    (1, set(), [("canary", 1, False), ("wave-1", 0, False), ("all", 0, False)]),
    # Two nodes: wave-1 (25%) is empty, its gate passes on to the next stage with nodes.
    (2, {"wave-1"}, [("canary", 1, False), ("wave-1", 0, False), ("all", 1, True)]),
    (2, {"wave-1", "all"}, [("canary", 1, False), ("wave-1", 0, False), ("all", 1, True)]),
    (5, {"wave-1", "all"}, [("canary", 1, False), ("wave-1", 1, True), ("all", 3, True)]),
])
def test_a_gate_is_never_lost_to_an_empty_stage(n, gated, expected):
    plans = plan_stages("x@1.0.0", fleet(n), DEFAULT_STAGES["scheduled"], gated=gated)
    assert [(p.name, len(p.nodes), p.needs_approval) for p in plans] == expected


@settings(max_examples=80, deadline=None)
@given(n=st.integers(min_value=1, max_value=12),
       shares=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=4),
       gates=st.lists(st.booleans(), min_size=5, max_size=5))
def test_no_node_is_reached_past_a_gate_without_an_approval(n, shares, gates):
    """Every node that a gated stage would have covered sits in a gated stage or after one."""
    specs = [StageSpec("canary", nodes=1)] + [StageSpec(f"w{i}", percent=p)
                                              for i, p in enumerate(sorted(shares))]
    specs.append(StageSpec("all", percent=100))
    gated = {s.name for s, g in zip(specs, gates, strict=False) if g}
    plans = plan_stages("x@1.0.0", fleet(n), specs, gated=gated)
    first_gate = next((i for i, s in enumerate(specs) if s.name in gated), None)
    if first_gate is None:
        assert not any(p.needs_approval for p in plans)
        return
    opened = next((i for i, p in enumerate(plans) if p.needs_approval), None)
    assert opened is not None, "a configured gate vanished"
    # nothing beyond what the stages before the first gate reach goes out ungated
    ungated_nodes = {name for p in plans[:opened] for name in p.nodes}
    before_gate = {name for p in plans[:first_gate] for name in p.nodes}
    assert ungated_nodes <= before_gate


CONFIG = {
    "nodes": [{"name": "a", "url": "http://127.0.0.1:7001", "token_env": "TOKEN_A"},
              {"name": "b", "url": "http://127.0.0.1:7002", "groups": ["eu"]}],
    "rollout": {"concurrency": 4, "scheduled": [
        {"name": "canary", "nodes": 1, "bake_seconds": 5},
        {"name": "all", "percent": 100, "approval": True}]},
}


def test_inventory_config_parses(tmp_path):
    inv = parse_inventory(Table(CONFIG, "hotrelease.toml"), tmp_path)
    assert [n.name for n in inv.nodes] == ["a", "b"]
    assert inv.nodes[0].token_env == "TOKEN_A" and inv.nodes[1].groups == ("eu",)
    assert inv.settings.concurrency == 4
    assert [s.name for s in inv.stages["scheduled"]] == ["canary", "all"]
    assert inv.stages["urgent"] == DEFAULT_STAGES["urgent"]


def test_inventory_from_separate_file(tmp_path):
    (tmp_path / "inventory.toml").write_text(
        '[[nodes]]\nname = "a"\nurl = "http://127.0.0.1:7001"\n')
    inv = parse_inventory(Table({"inventory": "inventory.toml"}, "hotrelease.toml"), tmp_path)
    assert inv.nodes[0].url == "http://127.0.0.1:7001"


@pytest.mark.parametrize("mutate, where", [
    (lambda c: c["rollout"]["scheduled"][1].update(percent=50), "rollout -> scheduled[1]"),
    (lambda c: c["rollout"]["scheduled"][0].update(percent=10), "rollout -> scheduled[0]"),
    (lambda c: c["rollout"]["scheduled"][0].update(nodes=0), "scheduled[0] -> nodes"),
    (lambda c: c["rollout"]["scheduled"][0].update(bake="5m"), "scheduled[0] -> bake"),
    (lambda c: c["nodes"][1].update(url="127.0.0.1:7002"), "nodes[1] -> url"),
    (lambda c: c["nodes"][1].update(name="a"), "nodes[1] -> name"),
    (lambda c: c["rollout"].update(concurrency="8"), "rollout -> concurrency"),
])
def test_bad_inventory_names_the_key(tmp_path, mutate, where):
    import copy

    config = copy.deepcopy(CONFIG)
    mutate(config)
    with pytest.raises(ConfigError) as info:
        parse_inventory(Table(config, "hotrelease.toml"), tmp_path)
    assert where in str(info.value) and str(info.value).startswith("hotrelease.toml: ")
