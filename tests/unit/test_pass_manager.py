"""Pass framework: names and ordering resolved at config time, with clear errors."""

from __future__ import annotations

import pytest

from runner import registry
from runner.errors import ConfigError
from runner.pass_base import Pass
from runner.pass_manager import order_passes, plan_passes
from runner.plan import plan_run
from tests.support.configs import compose_config


class Fake(Pass):
    engines = ("paddle", "torch")

    def __init__(self, name: str, after=(), before=()) -> None:
        super().__init__()
        self.name, self.after, self.before = name, tuple(after), tuple(before)

    def check(self, component, ctx):
        return None

    def apply(self, component, ctx):
        return component, {}


def test_order_follows_constraints_and_is_stable():
    passes = {"c": Fake("c", after=["a"]), "a": Fake("a"), "b": Fake("b", before=["a"])}
    assert order_passes(passes) == ["b", "a", "c"]


def test_cycles_are_refused_with_the_cycle_named():
    passes = {"a": Fake("a", after=["b"]), "b": Fake("b", after=["a"])}
    with pytest.raises(ConfigError, match=r"passes (a -> b -> a|b -> a -> b) form a cycle"):
        order_passes(passes)


def test_constraints_on_unselected_passes_are_ignored():
    assert order_passes({"a": Fake("a", after=["zzz"])}) == ["a"]


def test_unknown_pass_is_a_config_error_before_weights_load():
    expected = (r"unknown pass 'warp_drive'; registered passes: attention, channels_last, cuda_graphs, fp8_linear, "
                r"groupnorm_silu, qkv_fusion, rope_cache, step_cache, text_embedding_cache$")  # fmt: skip
    with pytest.raises(ConfigError, match=expected):
        plan_run(compose_config(["+passes.warp_drive={}"]), check_capabilities=False)


def test_bad_pass_option_is_a_config_error():
    with pytest.raises(ConfigError, match=r"passes.attention.kernel='turbo' is not one of auto, flash"):
        plan_run(compose_config(["passes=attention", "passes.attention.kernel=turbo"]), check_capabilities=False)


def test_named_lists_and_shell_lists_compose():
    assert [p.name for p in plan_passes({}, "torch")] == []
    chosen = compose_config(["passes=[text_embedding_cache,qkv_fusion]"]).passes
    assert [p.name for p in plan_passes(chosen, "paddle")] == ["qkv_fusion", "text_embedding_cache"]
    everything = plan_passes(compose_config(["passes=all"]).passes, "torch")
    assert [p.name for p in everything] == [
        "qkv_fusion",
        "attention",
        "channels_last",
        "groupnorm_silu",
        "rope_cache",
        "text_embedding_cache",
    ]


def test_default_list_is_per_engine():
    default = compose_config(["passes=default"]).passes
    for engine in ("paddle", "torch"):
        names = [p.name for p in plan_passes(default, engine)]
        expected = [p.name for p in plan_passes(compose_config(["passes=all"]).passes, engine)
                    if engine in registry.resolve("pass", p.name).defaults]  # fmt: skip
        assert names == expected


def test_passes_list_command_prints_every_pass(capsys):
    from runner import registry
    from runner.pass_manager import pass_table

    table = pass_table()
    for name in registry.names("pass"):
        assert f"| {name} |" in table
    assert "requires" in table and "changes" in table
