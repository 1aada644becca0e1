"""The TrainNet worker: an HTTP client around the same local-training function the simulator uses.

    trainnet worker --coordinator http://127.0.0.1:8470 --state ~/.trainnet/worker
    trainnet demo --workers 3            # a coordinator and three workers on this machine

`client.CoordinatorClient` speaks the HTTP protocol (signed requests, bounded retries),
`node.Worker` is the lease -> download -> train -> compress -> upload loop.
"""

from trainnet.worker.client import ApiError, CoordinatorClient, Unreachable

__all__ = ["ApiError", "CoordinatorClient", "Unreachable"]
