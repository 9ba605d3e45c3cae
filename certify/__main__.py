"""``python -m certify``: the console script, for launchers such as ``torchrun -m certify run ...``."""

import sys

from certify.cli import main

if __name__ == "__main__":
    sys.argv[0] = "certify"  # recorded command lines read 'certify ...' as with the console script
    main()
