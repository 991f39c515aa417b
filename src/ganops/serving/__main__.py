"""``python -m ganops.serving``: see :mod:`ganops.serving.server`."""

from ganops.serving.server import main

if __name__ == "__main__":
    main()
