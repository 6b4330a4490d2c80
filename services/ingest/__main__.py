import sys

from services.ingest.app import main
from shared.runtime import run

sys.exit(run(main()))
