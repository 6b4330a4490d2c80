import asyncio
import sys

from services.ingest.app import main

sys.exit(asyncio.run(main()))
