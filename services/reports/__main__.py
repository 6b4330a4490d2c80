import asyncio
import sys

from services.reports.app import main

sys.exit(asyncio.run(main()))
