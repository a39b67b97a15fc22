import sys

from normscope.cli import main

sys.exit(main())
