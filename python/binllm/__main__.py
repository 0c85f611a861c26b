import sys

from binllm.cli import main

sys.exit(main())
