import sys

from pda.cli import main

sys.exit(main())
