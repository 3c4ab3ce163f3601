"""Entry point of a peer queue's bench worker process (see pgqueue._bench_systems)."""

from pgqueue._bench_systems import main

if __name__ == "__main__":
    main()
