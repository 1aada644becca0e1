"""TrainNet command line.

    trainnet simulate --config bench/standard.toml --json out.json
    trainnet --help

Subcommands live beside the code they drive (one module per concept) and are
registered here by import path, so this file stays a table of contents.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command. Imported lazily so that
# `trainnet --help` stays fast and a broken optional part cannot break the rest.
COMMANDS: dict[str, str] = {
    "simulate": "trainnet.sim.cli:simulate_cmd",
    "estimate": "trainnet.planner.cli:estimate_cmd",
    "coordinator": "trainnet.server.cli:coordinator_cmd",
    "aggregator": "trainnet.server.cli:aggregator_cmd",
    "tokens": "trainnet.server.cli:tokens_cmd",
    "worker": "trainnet.worker.cli:worker_cmd",
    "verifier": "trainnet.worker.verifier:verifier_cmd",
    "demo": "trainnet.worker.demo:demo_cmd",
    "sample": "trainnet.model.sample:sample_cmd",
    "report": "trainnet.dashboard.report:report_cmd",
    "data": "trainnet.data.cli:data_cmd",
    "plan-memory": "trainnet.models.memory_cli:plan_memory_cmd",
    "export": "trainnet.models.export:export_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._find(name) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._find(name)

    @staticmethod
    def _find(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only hide commands whose module is not written yet; a missing
            # third-party dependency inside an existing module must surface.
            if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup)
@click.version_option(package_name="trainnet")
def main() -> None:
    """TrainNet: many untrusted machines train one language model together."""


if __name__ == "__main__":
    main()
