import sys

from sessionstream.cli import main

sys.exit(main())
