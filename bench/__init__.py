"""The benchmark harness: guardproxy side by side with direct, bare-aiohttp and nginx paths."""
