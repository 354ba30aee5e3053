from typing import AsyncIterator, Optional

import shmbus

class Bus(shmbus.Bus):
    def pubsub(self, ignore_subscribe_messages: bool = ...) -> PubSub: ...  # type: ignore[override]

class PubSub(shmbus.PubSub):
    async def get_message(  # type: ignore[override]
        self, ignore_subscribe_messages: bool = ..., timeout: Optional[float] = ...
    ) -> Optional[shmbus.Message]: ...
    async def listen(self) -> AsyncIterator[shmbus.Message]: ...  # type: ignore[override]
    def close(self) -> None: ...
