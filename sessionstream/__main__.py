import sys

from sessionstream.cli.main import main

sys.exit(main())
