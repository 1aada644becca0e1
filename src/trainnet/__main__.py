"""`python -m trainnet ...` is the `trainnet` command (so that `torchrun -m trainnet worker ...` works)."""

from trainnet.cli import main

if __name__ == "__main__":
    main()
