import asyncio
import sys

from services.dispatcher.app import main

sys.exit(asyncio.run(main()))
