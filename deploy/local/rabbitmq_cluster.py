"""A cluster of private RabbitMQ nodes on 127.0.0.1, joined through rabbitmqctl."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Self

from agentqueue.deploy.local.epmd import Epmd
from agentqueue.deploy.local.ports import free_port
from agentqueue.deploy.local.process import kill_leftovers
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ, default_node_name
from agentqueue.deploy.local.supervisor import StartStop, claim_data_dir, release_data_dir


class LocalRabbitMQCluster(StartStop):
    """Several private RabbitMQ nodes on 127.0.0.1 joined into one cluster."""

    def __init__(
        self,
        data_dir: Path | str,
        nodes: int = 3,
        *,
        name: str | None = None,
        memory_limit_mb: int = 1024,
        extra_config: str = "",
    ) -> None:
        """Describe a cluster of nodes sharing one private epmd and one Erlang cookie."""
        if nodes < 1:
            raise ValueError(f"nodes={nodes} makes no cluster; give 1 or more")
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        base = name or default_node_name(self.data_dir)
        self._epmd = Epmd(self.data_dir, free_port())
        cookie = self._cookie()
        self.nodes = [
            LocalRabbitMQ(
                self.data_dir / f"node{i}",
                name=f"{base}-{i}",
                epmd_port=self._epmd.port,
                cookie=cookie,
                memory_limit_mb=memory_limit_mb,
                extra_config=extra_config,
            )
            for i in range(nodes)
        ]

    def __repr__(self) -> str:
        return f"LocalRabbitMQCluster({[n.node_name for n in self.nodes]})"

    def _cookie(self) -> str:
        # Kept in the cluster dir so a later cluster object on the same dir can rejoin.
        path = self.data_dir / "cluster.cookie"
        if not path.exists():
            path.write_text(secrets.token_hex(16).upper())
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def urls(self) -> list[str]:
        """AMQP URLs of all nodes, in node order."""
        return [n.url for n in self.nodes]

    @property
    def running(self) -> bool:
        """True while every node's process is alive."""
        return all(n.running for n in self.nodes)

    def start(self, timeout: float = 120) -> Self:
        """Start every node (in parallel) and join nodes 1..n-1 to node 0."""
        claim_data_dir(self.data_dir, self)
        try:
            if not self._epmd.running:
                kill_leftovers(self.data_dir)
                self._epmd.start()
            # A node with no database yet has never joined; asking the others costs a
            # CLI run each, which is slow on a busy machine.
            fresh = [not (n.data_dir / "mnesia" / n.node_name).exists() for n in self.nodes]
            # Launch all first: restarted members wait for each other's tables at boot.
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready(timeout)
            seed = self.nodes[0]
            for node, new in zip(self.nodes[1:], fresh[1:], strict=True):
                if new or seed.node_name not in self._members(node):
                    node.ctl("stop_app")
                    node.ctl("join_cluster", seed.node_name)
                    node.ctl("start_app")
            for node in self.nodes:
                node.wait_ready(timeout, from_now=True)
        except BaseException:
            self.stop()
            raise
        return self

    def _members(self, node: LocalRabbitMQ) -> list[str]:
        status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        return list(status.get("disk_nodes", [])) + list(status.get("ram_nodes", []))

    def running_nodes(self, i: int = 0) -> list[str]:
        """Node names that node i sees running in its cluster."""
        status = json.loads(self.nodes[i].ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def kill_node(self, i: int) -> None:
        """SIGKILL node i, as a crash would."""
        self.nodes[i].kill()

    def stop_node(self, i: int) -> None:
        """Stop node i gracefully."""
        self.nodes[i].stop()

    def start_node(self, i: int, timeout: float = 60) -> None:
        """Start node i again; it rejoins the cluster from its own data."""
        if not self._epmd.running:
            self._epmd.start()
        self.nodes[i].start(timeout)

    def stop(self, timeout: float = 30) -> None:
        """Stop every node (SIGTERM to all at once) and the shared epmd."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.stop(timeout)
        self._epmd.stop()
        release_data_dir(self.data_dir, self)
