"""Start the test control plane by hand (and the test node), print how long each part took, and keep it up.

    python -m tests.support.controlplane            # until Enter; prints `export KUBECONFIG=...` to use kubectl
    python -m tests.support.controlplane --once     # start, print the start-up seconds, stop (what the docs quote)
    python -m tests.support.controlplane --once --repeat 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from .cluster import ControlPlane, find_binaries
from .fixtures import NODE_NAME, node_image_env, wait_schedulable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="stop right after start-up")
    parser.add_argument("--repeat", type=int, default=1, help="with --once: start this many times")
    parser.add_argument("--no-node", action="store_true", help="do not register the test node")
    args = parser.parse_args()
    from ..node import Node

    binaries = find_binaries()
    for _ in range(args.repeat if args.once else 1):
        root = Path(tempfile.mkdtemp(prefix="ganops-controlplane-"))
        started = time.monotonic()
        with ControlPlane(binaries, root) as cp:
            times = dict(cp.times.__dict__)
            node = None
            if not args.no_node:
                node = Node.kubelet(cp.client_for_node(NODE_NAME), root / "node", node_name=NODE_NAME,
                                    image_env={k: v for k, v in node_image_env().items() if v}).start()
                wait_schedulable(cp.client(), NODE_NAME)
                times["node_schedulable"] = time.monotonic() - started
            print(json.dumps({k: round(v, 2) for k, v in times.items() if isinstance(v, float)}))
            try:
                if not args.once:
                    print(f"export KUBECONFIG={cp.admin_kubeconfig}    # logs: {root / 'logs'}")
                    input("Enter stops it ")
            finally:
                if node is not None:
                    node.stop()


if __name__ == "__main__":
    main()
