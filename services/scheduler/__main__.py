import asyncio
import sys

from services.scheduler.app import main

sys.exit(asyncio.run(main()))
