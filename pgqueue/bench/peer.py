"""Entry point of a peer queue's bench worker process (see pgqueue.bench._systems)."""

from pgqueue.bench._systems import main

if __name__ == "__main__":
    main()
