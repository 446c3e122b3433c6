import sys

from edgetpud.cli import main

sys.exit(main())
