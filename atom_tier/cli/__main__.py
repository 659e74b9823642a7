import sys

from atom_tier.cli import main

sys.exit(main())
