# The example from the document ferroloop started from (shared/seed/), unchanged
# apart from the import it needs to run on its own.
import asyncio


async def my_async_function():
    # Perform some asynchronous tasks here
    await asyncio.sleep(1)
    return "Done"


async def main():
    result = await my_async_function()
    print(result)

asyncio.run(main())
