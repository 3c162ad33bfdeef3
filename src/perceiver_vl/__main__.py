import sys

from perceiver_vl.cli import main

sys.exit(main())
