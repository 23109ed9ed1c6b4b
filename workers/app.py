"""`App`: the registry of agents and tools a worker serves."""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args, overload

from agentqueue.protocol.messages import OnBusy
from agentqueue.workers import sandbox_tools
from agentqueue.workers.errors import UnknownHandler
from agentqueue.workers.pipeline.middleware import Middleware
from agentqueue.workers.sandbox_proxy import network_allow_list
from agentqueue.workers.settings import Settings, state_dir
from agentqueue.workers.toolkit import NeedsApproval, ToolSpec

if TYPE_CHECKING:
    from agentqueue.workers.agent_context import AgentContext

AgentFactory = Callable[..., Any]  # (AgentContext) -> agentscope.agent.Agent
LifecycleHook = Callable[[str, str], Awaitable[None]]  # (worker id, role)
# The decorated function, returned as it is: its own type, not the registry's.
AgentFactoryT = TypeVar("AgentFactoryT", bound="Callable[[AgentContext], Any]")
ToolFunctionT = TypeVar("ToolFunctionT", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A registered agent: its name and the factory that builds it for one session."""

    name: str
    factory: AgentFactory
    description: str = ""
    on_busy: OnBusy = "enqueue"  # what a new turn does while the session is busy


class App:
    """Agents and tools, registered with decorators:

    ```python
    app = App("weather")

    @app.tool("get_weather")
    async def get_weather(city: str) -> str: ...

    @app.agent("weather")
    def weather(ctx: AgentContext) -> Agent:
        return ctx.build_agent("You answer questions about the weather.")
    ```

    Middleware added with `add_middleware` runs around every event the app's workers handle,
    on local workers and on Function Compute alike (see `agentqueue.workers.pipeline`).
    """

    def __init__(self, name: str = "app", *, middleware: list[Middleware] | None = None) -> None:
        self.name = name
        self.agents: dict[str, AgentSpec] = {}
        self.tools: dict[str, ToolSpec] = {}
        self.sandbox_sets: list[Any] = []  # the Sandboxes of each sandbox_tools() call
        self.middleware: list[Middleware] = list(middleware or [])
        # Awaited with (worker id, role) when a worker starts serving and after it stopped.
        self.starting: list[LifecycleHook] = []
        self.stopping: list[LifecycleHook] = []

    def on_start(self, hook: LifecycleHook) -> LifecycleHook:
        """Await `hook(worker_id, role)` before a worker takes its first event."""
        self.starting.append(hook)
        return hook

    def on_stop(self, hook: LifecycleHook) -> LifecycleHook:
        """Await `hook(worker_id, role)` once a worker has finished or handed back its events."""
        self.stopping.append(hook)
        return hook

    def add_middleware(self, middleware: Middleware) -> Middleware:
        """Run `middleware` around every event, after the ones added before it."""
        if not isinstance(middleware, Middleware):
            raise TypeError(
                f"{middleware!r} is not a Middleware: subclass"
                " agentqueue.workers.pipeline.Middleware and override admit or process"
            )
        self.middleware.append(middleware)
        return middleware

    @overload
    def agent(self, name: AgentFactoryT, /) -> AgentFactoryT: ...

    @overload
    def agent(
        self, name: str | None = None, *, description: str = "", on_busy: OnBusy = "enqueue"
    ) -> Callable[[AgentFactoryT], AgentFactoryT]: ...

    def agent(
        self,
        name: str | AgentFactoryT | None = None,
        *,
        description: str = "",
        on_busy: OnBusy = "enqueue",
    ) -> AgentFactoryT | Callable[[AgentFactoryT], AgentFactoryT]:
        """Register an agent factory `(ctx: AgentContext) -> Agent` under `name`.

        `@app.agent` alone names it after the function; `on_busy` is the default for its
        requests that do not say (see `OnBusy`).
        """
        if on_busy not in get_args(OnBusy):
            raise ValueError(
                f"on_busy must be one of {', '.join(get_args(OnBusy))}, got {on_busy!r}"
            )

        given = None if callable(name) else name

        def register(factory: AgentFactoryT) -> AgentFactoryT:
            agent_name = given or factory.__name__
            if agent_name in self.agents:
                raise ValueError(f"agent {agent_name!r} is already registered on app {self.name!r}")
            self.agents[agent_name] = AgentSpec(agent_name, factory, description, on_busy)
            return factory

        return register(name) if callable(name) else register

    @overload
    def tool(self, name: ToolFunctionT, /) -> ToolFunctionT: ...

    @overload
    def tool(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        remote: bool = True,
        timeout: float | None = 60.0,
        idempotent: bool = False,
        retry_on: tuple[type[Exception], ...] = (),
        requires_approval: bool | NeedsApproval = False,
        approval_timeout: float | None = None,
        offered: bool = True,
    ) -> Callable[[ToolFunctionT], ToolFunctionT]: ...

    def tool(
        self,
        name: str | ToolFunctionT | None = None,
        *,
        description: str | None = None,
        remote: bool = True,
        timeout: float | None = 60.0,
        idempotent: bool = False,
        retry_on: tuple[type[Exception], ...] = (),
        requires_approval: bool | NeedsApproval = False,
        approval_timeout: float | None = None,
        offered: bool = True,
    ) -> ToolFunctionT | Callable[[ToolFunctionT], ToolFunctionT]:
        """Expose a typed function as a tool; `remote=True` runs it on tool workers as events.

        `@app.tool` alone names it after the function with the defaults below.

        `timeout` is the most a call may run (a caller may ask for less); exceptions in
        `retry_on` are transient: the call is retried with backoff instead of failing at once.
        `requires_approval` (True, or a predicate on the arguments) pauses the turn before a
        call until `client.approve` or `client.deny` decides it, or `approval_timeout` seconds
        (default: the worker's AGENTQUEUE_APPROVAL_TIMEOUT) pass and it counts as denied.
        `offered=False` keeps the tool from agents' models (callers still reach it).
        """

        given = None if callable(name) else name

        def register(func: ToolFunctionT) -> ToolFunctionT:
            tool_name = given or func.__name__
            if tool_name in self.tools:
                raise ValueError(f"tool {tool_name!r} is already registered on app {self.name!r}")
            self.tools[tool_name] = ToolSpec(
                name=tool_name,
                func=func,
                description=description,  # None: AgentScope reads the docstring, Args and all
                remote=remote,
                timeout=timeout,
                idempotent=idempotent,
                retry_on=retry_on,
                requires_approval=requires_approval,
                approval_timeout=approval_timeout,
                offered=offered,
            )
            return func

        return register(name) if callable(name) else register

    def sandbox_tools(
        self,
        *types: str,
        root: str | None = None,
        pool_size: int = 2,
        idle_ttl: float = 600.0,
        call_timeout: float = 30.0,
        share_net: bool = False,
        pids_max: int = 128,
        network: str | list[str] = "none",
        memory_max: int = 1 << 30,
        screen: tuple[int, int] = (1024, 768),
        inline_image_limit: int = 32 * 1024,
        artifacts: str | None = None,
        limits: dict[str, int] | None = None,
        snapshot_max: int = 16 << 20,
    ) -> Any:
        """Register sandboxed tool sets (`"base"`, `"filesystem"`, `"browser"`, `"gui"`) that
        run per session in bwrap.

        `root` holds the sessions' workspaces (default: the worker's AGENTQUEUE_SANDBOX_ROOT,
        else `$XDG_STATE_HOME/agentqueue/sandboxes`). `network` is what a browser may reach:
        `"none"` or a list of `host` / `host:port`; `memory_max` caps each sandbox by a memory
        cgroup;
        `limits` replaces the rlimits (`resource.RLIMIT_*` names to values) of base sandboxes;
        a workspace of up to `snapshot_max` bytes is snapshot into the store after each call
        that changed it and restored where the session moves (0: off, for a shared root);
        `screen` is a gui display's and a browser viewport's size; images over
        `inline_image_limit` bytes go to the store `artifacts` (default: the worker's) and
        travel by reference. Returns the `Sandboxes` object that owns each worker's sandboxes.
        """
        where = Path(root or Settings.load().sandbox_root or Path(state_dir()) / "sandboxes")
        config = sandbox_tools.default_config(
            where,
            pool_size=pool_size,
            idle_ttl=idle_ttl,
            call_timeout=call_timeout,
            share_net=share_net,
            pids_max=pids_max,
            network=network_allow_list(network),
            memory_max=memory_max,
            screen=tuple(screen),
            inline_image_limit=inline_image_limit,
            artifacts=artifacts,
            snapshot_max=snapshot_max,
            **({"limits": dict(limits)} if limits is not None else {}),
        )
        boxes = sandbox_tools.register(self, types, config)
        self.sandbox_sets.append(boxes)
        return boxes

    def agent_spec(self, name: str | None) -> AgentSpec:
        """The agent called `name`, or the only/first one when `name` is None."""
        if name is None:
            if not self.agents:
                raise UnknownHandler(f"app {self.name!r} has no agents registered")
            return next(iter(self.agents.values()))
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(sorted(self.agents)) or "none"
            raise UnknownHandler(
                f"agent {name!r} is not registered on app {self.name!r} (registered: {known})"
            ) from None

    def tool_spec(self, name: str) -> ToolSpec:
        """The tool called `name`; unknown names are refused (the allowlist is the registry)."""
        try:
            return self.tools[name]
        except KeyError:
            known = ", ".join(sorted(self.tools)) or "none"
            raise UnknownHandler(
                f"tool {name!r} is not registered on app {self.name!r} (registered: {known})"
            ) from None


def load_app(spec: str) -> App:
    """Import `module:attribute` (e.g. `examples.weather:app`) and check it is an `App`."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"app spec {spec!r} must look like 'package.module:app'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # the app's own import failed: its traceback is what helps
        raise ValueError(
            f"cannot import the app module {module_name!r} of {spec!r}: no module named"
            f" {exc.name!r} in {os.getcwd()} or on PYTHONPATH; run from the folder that holds"
            " it, or give its full dotted path"
        ) from None
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(app, App):
        raise TypeError(f"{spec!r} is a {type(app).__name__}, not an agentqueue App")
    return app
