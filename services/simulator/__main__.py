"""``python -m services.simulator``: run the gateway simulator until SIGTERM or SIGINT."""

import asyncio

from .app import main

if __name__ == "__main__":
    asyncio.run(main())
