"""The actor directory and the KV store, on the control service (runtime.control.service):
named actors (register_actor / lookup_actor / remove_actor), where every published actor
runs (actor_up / actor_location: runtime.driver.relocate follows restarts by it), and
small values by key (kv_put / kv_get). All of it is saved across a restart
(runtime.control.persist)."""
from __future__ import annotations


class DirectoryMixin:
    """Part of ControlService (runtime.control.service)."""

    actors: dict          # name -> actor handle info
    actor_nodes: dict     # actor id -> {"node_id", "epoch", "owner", "detached", ...}
    kv: dict

    def rpc_register_actor(self, identity, name, info):
        """False when another actor has the name (the caller says so to the user)."""
        existing = self.actors.get(name)
        if existing is not None and existing["actor_id"] != info["actor_id"]:
            return False
        self.actors[name] = info
        return True

    def rpc_lookup_actor(self, identity, name):
        return self.actors.get(name)

    def rpc_remove_actor(self, identity, name, actor_id):
        if name in self.actors and self.actors[name]["actor_id"] == actor_id:
            del self.actors[name]
        self.actor_nodes.pop(actor_id, None)
        return True

    def rpc_actor_up(self, identity, actor_id, info):
        self.actor_nodes[actor_id] = info
        return True

    def rpc_actor_location(self, identity, actor_id):
        return self.actor_nodes.get(actor_id)

    def rpc_kv_put(self, identity, key, value):
        self.kv[key] = value
        return True

    def rpc_kv_get(self, identity, key):
        return self.kv.get(key)

