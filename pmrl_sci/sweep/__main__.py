"""``python -m pmrl_sci.sweep``: run a sweep worker (see :mod:`pmrl_sci.sweep`)."""

from pmrl_sci.sweep.cli import main

if __name__ == "__main__":
    main()
