# The example from the seed article "Working with async and await in Python
# Asyncio" (shared/seed), assembled into one runnable script.
import asyncio


async def my_async_function():
    # Perform some asynchronous tasks here
    await asyncio.sleep(1)
    return "Done"


async def main():
    result = await my_async_function()
    print(result)

asyncio.run(main())
