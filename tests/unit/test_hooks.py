"""runner.hooks on both frameworks: order, removal in any position, exact restoration, named methods,
copies, and the module staying itself."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from runner.hooks import HookRegistry, ModelHook, hook_names, hooks_in, register_hook, remove_hook


class Add(ModelHook):
    """Adds `value` to the output and logs its name around the inner call."""

    def __init__(self, value: float, log: list[str], name: str) -> None:
        self.value, self.log, self.name = value, log, name

    def new_forward(self, module, call, *args, **kwargs):
        self.log.append(f"enter {self.name}")
        out = call(*args, **kwargs)
        self.log.append(f"leave {self.name}")
        return out + self.value


class Double(ModelHook):
    def pre_forward(self, module, args, kwargs):
        return (args[0] * 2, *args[1:]), kwargs


class Negate(ModelHook):
    def post_forward(self, module, output):
        return -output


def torch_linear():
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(4, 3), lambda: torch.ones(2, 4), lambda t: t.detach().numpy()


def paddle_linear():
    import paddle

    paddle.seed(0)
    return paddle.nn.Linear(4, 3), lambda: paddle.ones([2, 4]), lambda t: t.numpy()


FRAMEWORKS = {"torch": torch_linear, "paddle": paddle_linear}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_hooks_run_inner_to_outer_and_removal_restores_the_call(framework):
    module, make_input, to_numpy = FRAMEWORKS[framework]()
    cls = type(module)
    x = make_input()
    plain = to_numpy(module(x))
    log: list[str] = []
    register_hook(module, "a", Add(1.0, log, "a"))
    register_hook(module, "b", Add(10.0, log, "b"))
    assert isinstance(module, cls) and HookRegistry.of(module).names() == ["a", "b"]
    np.testing.assert_array_equal(to_numpy(module(x)), plain + 11.0)
    assert log == ["enter b", "enter a", "leave a", "leave b"]  # the first registered sits innermost

    remove_hook(module, "a")  # from under another hook
    np.testing.assert_array_equal(to_numpy(module(x)), plain + 10.0)
    remove_hook(module, "b")
    assert "forward" not in vars(module) and hook_names(module) == {}
    assert type(module).forward is cls.forward and module.forward.__func__ is cls.forward
    assert to_numpy(module(x)).tobytes() == plain.tobytes()


def test_an_innermost_hook_runs_inside_those_already_there_and_removes_cleanly():
    module, make_input, to_numpy = torch_linear()
    x = make_input()
    plain = to_numpy(module(x))
    log: list[str] = []
    register_hook(module, "outer", Add(1.0, log, "outer"))
    register_hook(module, "last", Add(10.0, log, "last"))
    register_hook(module, "core", Add(100.0, log, "core"), innermost=True)
    assert HookRegistry.of(module).names() == ["core", "outer", "last"]
    np.testing.assert_array_equal(to_numpy(module(x)), plain + 111.0)
    assert log == ["enter last", "enter outer", "enter core", "leave core", "leave outer", "leave last"]
    remove_hook(module, "core")
    log.clear()
    np.testing.assert_array_equal(to_numpy(module(x)), plain + 11.0)
    assert log == ["enter last", "enter outer", "leave outer", "leave last"]
    remove_hook(module, "outer")
    remove_hook(module, "last")
    assert "forward" not in vars(module) and to_numpy(module(x)).tobytes() == plain.tobytes()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_pre_and_post_forward_and_the_module_stays_itself(framework):
    module, make_input, to_numpy = FRAMEWORKS[framework]()
    x = make_input()
    weights = {k: to_numpy(v).copy() for k, v in module.state_dict().items()}
    doubled = to_numpy(module(x * 2))
    register_hook(module, "double", Double())
    register_hook(module, "negate", Negate())
    np.testing.assert_array_equal(to_numpy(module(x)), -doubled)
    assert set(module.state_dict()) == set(weights) and len(list(module.parameters())) == 2


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_copy_of_a_hooked_module_runs_its_own_weights_and_hooks(framework):
    module, make_input, to_numpy = FRAMEWORKS[framework]()
    x = make_input()
    register_hook(module, "negate", Negate())
    twin = copy.deepcopy(module)
    twin_weight = twin.weight
    if hasattr(twin_weight, "set_value"):
        twin_weight.set_value(twin_weight * 0)
    else:
        twin_weight.data.zero_()
    assert HookRegistry.of(twin).names() == ["negate"]
    assert HookRegistry.of(twin).module is twin
    np.testing.assert_array_equal(to_numpy(twin(x)), -to_numpy(twin.bias).reshape(1, -1).repeat(2, axis=0))
    assert not np.array_equal(to_numpy(module(x)), to_numpy(twin(x)))


def test_named_methods_and_earlier_instance_attributes_are_restored():
    import torch

    class Vae(torch.nn.Module):
        def decode(self, z):
            return z + 1

    vae = Vae()
    register_hook(vae, "negate", Negate(), method="decode")
    assert float(vae.decode(torch.tensor(1.0))) == -2.0
    assert hooks_in(vae) == {"decode": ["negate"]}
    remove_hook(vae, "negate", method="decode")
    assert "decode" not in vars(vae) and float(vae.decode(torch.tensor(1.0))) == 2.0

    module = torch.nn.Identity()
    earlier = lambda x: x * 3  # noqa: E731 - an instance attribute someone set before the hooks
    vars(module)["forward"] = earlier
    register_hook(module, "negate", Negate())
    assert float(module(torch.tensor(1.0))) == -3.0
    remove_hook(module, "negate")
    assert vars(module)["forward"] is earlier


def test_only_below_hides_a_hook_and_those_above_it():
    import torch

    module = torch.nn.Identity()
    log: list[str] = []
    for value, name in ((1.0, "inner"), (10.0, "middle"), (100.0, "outer")):
        register_hook(module, name, Add(value, log, name))
    registry = HookRegistry.of(module)
    with registry.only_below("middle"):
        assert float(module(torch.tensor(0.0))) == 1.0
    with registry.only_below("inner"):
        assert "forward" not in vars(module) and float(module(torch.tensor(0.0))) == 0.0
    assert float(module(torch.tensor(0.0))) == 111.0


def test_duplicate_names_and_unknown_removals_are_refused():
    import torch

    module = torch.nn.Identity()
    register_hook(module, "a", Negate())
    with pytest.raises(ValueError, match=r"Identity.forward already has a hook named 'a'"):
        register_hook(module, "a", Negate())
    with pytest.raises(KeyError, match=r"no hook 'b' on Identity.forward; hooks: \['a'\]"):
        remove_hook(module, "b")
    with pytest.raises(AttributeError, match=r"Identity has no method 'decode' to hook"):
        register_hook(module, "a", Negate(), method="decode")
