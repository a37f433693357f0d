import sys

from medusa.gpu_bench.cli import main

sys.exit(main())
