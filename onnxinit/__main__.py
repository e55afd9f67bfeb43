"""``python -m onnxinit``: the same command line as the ``onnxinit`` script."""

from .cli import main

if __name__ == "__main__":
    main()
