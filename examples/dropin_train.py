"""Your own training loop as one TrainNet node (docs/DROPIN.md). Start a coordinator, then this:

    trainnet coordinator --run examples/dropin_run.toml --state /tmp/tn-dropin &
    python examples/dropin_train.py --coordinator http://127.0.0.1:8470 --state /tmp/tn-node
"""

import argparse

import trainnet

ap = argparse.ArgumentParser()
ap.add_argument("--coordinator", default="http://127.0.0.1:8470")
ap.add_argument("--state", default="trainnet-node", help="this node's key, model and residual live here")
ap.add_argument("--max-tasks", type=int, default=None)
args = ap.parse_args()

opt = trainnet.DistributedOptimizer(args.coordinator, state_dir=args.state, max_tasks=args.max_tasks)
model = opt.model  # the run's model, holding the current global version
for step, (x, y) in enumerate(opt.batches()):  # the leased task's batches, until the run is done
    with opt.autocast():  # bf16 when the task asks for it on this device
        _, loss = model(x, y)
    loss.backward()
    opt.step()  # AdamW step; after H steps: upload the pseudo-gradient, load the new global model
    opt.zero_grad()
    if step % 20 == 0:
        print(f"step {step} loss {loss.item():.3f}", flush=True)
opt.close()
print(f"done: {opt.participant.session.summary()}")
