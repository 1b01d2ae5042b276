"""The one way to wrap a module's call: named, ordered, removable hooks (engine-neutral).

Modelled on diffusers' `hooks/hooks.py` (`ModelHook` + `HookRegistry`). A registry is attached to a
module per entry method: "forward" for calls of the module itself, or another method such as a VAE's
"decode". While the registry holds hooks, that method is an instance attribute that runs the hook
chain around the original method; the component stays the module itself (`isinstance`,
`.parameters()`, `.to()`, `state_dict()` are untouched). Removing the last hook deletes the attribute,
so the module's call is exactly what it was before. Works on `torch.nn.Module` and `paddle.nn.Layer`
alike (both call `self.forward`, and an instance attribute is found before the class's method).

Hooks run in registration order from the inside out: the first registered hook sits next to the
original method, each later one wraps the chain below it. A hook's `new_forward` receives that inner
chain as `call`; the object is stable until a hook below it is removed, so a compiling hook may
compile it once and reuse the result.

This module is the only place in the project that assigns a module's `forward` or another method.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

REGISTRIES_ATTRIBUTE = "_runner_hook_registries"  # module.__dict__ entry: method name -> HookRegistry


class ModelHook:
    """Override what a wrapper needs; the defaults pass the call through unchanged.

    initialize / deinitialize: called when the hook is registered on / removed from a module.
    pre_forward: may rewrite the arguments. new_forward: runs the inner chain (`call`), or replaces it.
    post_forward: may rewrite the output.
    """

    def initialize(self, module: Any) -> None:
        """Called once when the hook is registered on `module`."""

    def deinitialize(self, module: Any) -> None:
        """Called once when the hook is removed from `module`."""

    def pre_forward(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return args, kwargs

    def new_forward(self, module: Any, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call(*args, **kwargs)

    def post_forward(self, module: Any, output: Any) -> Any:
        return output


class _Original:
    """The innermost link: the method as it was before any hook (the class's, or an earlier instance one)."""

    def __init__(self, registry: HookRegistry) -> None:
        self.registry = registry

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.registry.original()(*args, **kwargs)


class _Link:
    """One hook around the chain below it."""

    def __init__(self, registry: HookRegistry, hook: ModelHook, inner: Callable[..., Any]) -> None:
        self.registry, self.hook, self.inner = registry, hook, inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self.registry.module
        args, kwargs = self.hook.pre_forward(module, args, kwargs)
        output = self.hook.new_forward(module, self.inner, *args, **kwargs)
        return self.hook.post_forward(module, output)


class HookRegistry:
    """The hooks of one entry method of one module, named and ordered (inner to outer)."""

    def __init__(self, module: Any, method: str) -> None:
        if not callable(getattr(module, method, None)):
            raise AttributeError(f"{type(module).__name__} has no method {method!r} to hook")
        self.module = module
        self.method = method
        # An instance attribute set before the first hook (None: the class's method is the original).
        self._previous = vars(module).get(method)
        self._hooks: dict[str, ModelHook] = {}
        self._links: list[Callable[..., Any]] = [_Original(self)]

    # ----------------------------------------------------------------- lookup
    @classmethod
    def of(cls, module: Any, method: str = "forward") -> HookRegistry:
        """The registry of `module.method`, created (empty) on first use."""
        registries = vars(module).setdefault(REGISTRIES_ATTRIBUTE, {})
        if method not in registries:
            registries[method] = cls(module, method)
        return registries[method]

    @staticmethod
    def find(module: Any, method: str = "forward") -> HookRegistry | None:
        return vars(module).get(REGISTRIES_ATTRIBUTE, {}).get(method)

    def names(self) -> list[str]:
        """Hook names from the innermost to the outermost."""
        return list(self._hooks)

    def get(self, name: str) -> ModelHook:
        if name not in self._hooks:
            raise KeyError(f"no hook {name!r} on {type(self.module).__name__}.{self.method}; hooks: {self.names()}")
        return self._hooks[name]

    def original(self) -> Callable[..., Any]:
        """The method as it was before the first hook."""
        if self._previous is not None:
            return self._previous
        return types.MethodType(getattr(type(self.module), self.method), self.module)

    # ----------------------------------------------------------------- changes
    def register(self, name: str, hook: ModelHook, innermost: bool = False) -> ModelHook:
        """Add `hook` outside the current ones (innermost: next to the original method, inside them);
        names are unique per method.

        A hook that replaces the method's computation (a converted graph) goes innermost, so the hooks
        already there (a cache that answers without calling the method) still run around it.
        """
        if name in self._hooks:
            raise ValueError(f"{type(self.module).__name__}.{self.method} already has a hook named {name!r}")
        hook.initialize(self.module)
        if innermost:
            self._hooks = {name: hook, **self._hooks}
            self._relink(0)
        else:
            self._hooks[name] = hook
            self._links.append(_Link(self, hook, self._links[-1]))
        self._install()
        return hook

    def remove(self, name: str) -> ModelHook:
        """Remove hook `name` (any position); the hooks above it are relinked, those below are untouched."""
        hook = self.get(name)
        position = list(self._hooks).index(name)
        del self._hooks[name]
        hook.deinitialize(self.module)
        self._relink(position)
        self._install()
        return hook

    def _relink(self, position: int) -> None:
        """Rebuild the links of the hooks from `position` outwards; the links below it stay as they are."""
        self._links = self._links[: position + 1]
        for above in list(self._hooks.values())[position:]:
            self._links.append(_Link(self, above, self._links[-1]))

    def inner_call(self, name: str) -> Callable[..., Any]:
        """The chain below hook `name` (what its `new_forward` receives as `call`)."""
        return self._links[list(self._hooks).index(name)]

    @contextlib.contextmanager
    def only_below(self, name: str) -> Iterator[None]:
        """While inside, calling the method runs only the hooks below `name`.

        For hooks that hand the module itself to a tracer (a static-graph export calls the module):
        the tracer then sees the module without this hook and the hooks above it.
        """
        inner = self.inner_call(name)
        self._show(None if isinstance(inner, _Original) else inner)
        try:
            yield
        finally:
            self._install()

    def _show(self, link: Callable[..., Any] | None) -> None:
        """Make the method `link`, or the original method when None."""
        attributes = vars(self.module)
        attributes.pop(self.method, None)
        if link is not None:
            attributes[self.method] = link
        elif self._previous is not None:
            attributes[self.method] = self._previous

    def _install(self) -> None:
        attributes = vars(self.module)
        if self._hooks:
            attributes[self.method] = self._links[-1]
            return
        # No hooks left: the method is exactly what it was before the first one.
        if self._previous is None:
            attributes.pop(self.method, None)
        else:
            attributes[self.method] = self._previous
        registries = attributes.get(REGISTRIES_ATTRIBUTE, {})
        registries.pop(self.method, None)
        if not registries:
            attributes.pop(REGISTRIES_ATTRIBUTE, None)


@contextlib.contextmanager
def bypassed(registries: list[HookRegistry]) -> Iterator[None]:
    """While inside, the hooked methods of `registries` run their original methods (no hooks).

    For tracers that convert a module's source into a static program: a hook object on a submodule's
    method (a cache) cannot be traced, and a cache has no meaning inside a compiled program.
    """
    for registry in registries:
        registry._show(None)
    try:
        yield
    finally:
        for registry in registries:
            registry._install()


def registries_in(component: Any) -> list[HookRegistry]:
    """Every hook registry on the component and its submodules."""
    return [
        registry
        for _, module in _named_submodules(component)
        for registry in vars(module).get(REGISTRIES_ATTRIBUTE, {}).values()
    ]


def register_hook(
    module: Any, name: str, hook: ModelHook, method: str = "forward", innermost: bool = False
) -> ModelHook:
    """Shorthand for `HookRegistry.of(module, method).register(name, hook, innermost)`."""
    return HookRegistry.of(module, method).register(name, hook, innermost)


def remove_hook(module: Any, name: str, method: str = "forward") -> ModelHook:
    registry = HookRegistry.find(module, method)
    if registry is None:
        raise KeyError(f"{type(module).__name__}.{method} has no hooks")
    return registry.remove(name)


def hook_names(module: Any) -> dict[str, list[str]]:
    """Entry method -> hook names (inner to outer), for every hooked method of `module`."""
    registries = vars(module).get(REGISTRIES_ATTRIBUTE, {}) if hasattr(module, "__dict__") else {}
    return {method: registry.names() for method, registry in registries.items()}


def _named_submodules(module: Any) -> list[tuple[str, Any]]:
    if hasattr(module, "named_modules"):  # torch.nn.Module
        return list(module.named_modules())
    if hasattr(module, "named_sublayers"):  # paddle.nn.Layer
        return list(module.named_sublayers(include_self=True))
    return [("", module)]


def hooks_in(component: Any) -> dict[str, list[str]]:
    """ "path.method" -> hook names (inner to outer) for the component and each hooked submodule."""
    found = {}
    for path, module in _named_submodules(component):
        for method, names in hook_names(module).items():
            found[f"{path}.{method}" if path else method] = names
    return found
