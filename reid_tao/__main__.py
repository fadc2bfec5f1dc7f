import sys

from reid_tao.cli import main

sys.exit(main())
