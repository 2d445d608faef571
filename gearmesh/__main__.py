import sys

from gearmesh.cli import main

sys.exit(main())
